"""Reduced Lennard-Jones units used throughout :mod:`cg.diffsim`, and conversions to workbench units.

Inside ``cg.diffsim`` every quantity is *reduced*: energies in units of epsilon, lengths in sigma,
masses in m (all particles have m = 1), k_B = 1, so temperatures are k_B T / epsilon, number
densities rho* = rho sigma^3 and times t* = t sqrt(epsilon / (m sigma^2)). Convert at the edges with
:class:`ReducedUnits`, which maps to the workbench units (Å, kcal/mol, fs, K, amu).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from forcefield.units import KB_KCAL, KCAL_PER_AMU_A2_TO_A_PER_FS2


@dataclass(frozen=True)
class ReducedUnits:
    """Scales of a reduced LJ system: ``epsilon`` (kcal/mol), ``sigma`` (Å), ``mass`` (amu).

    Examples
    --------
    Argon-like units: ``ReducedUnits(0.2381, 3.405, 39.948).temperature_K(1.2)`` is about 144 K.
    """

    epsilon: float = 0.2381
    sigma: float = 3.405
    mass: float = 39.948

    def temperature_K(self, t_red: float) -> float:
        """Reduced temperature -> K."""
        return t_red * self.epsilon / KB_KCAL

    def temperature_red(self, t_K: float) -> float:
        """K -> reduced temperature."""
        return t_K * KB_KCAL / self.epsilon

    def energy_kcal(self, u_red):
        """Reduced energy -> kcal/mol."""
        return u_red * self.epsilon

    def length_A(self, r_red):
        """Reduced length -> Å."""
        return r_red * self.sigma

    def density_per_A3(self, rho_red: float) -> float:
        """Reduced number density -> particles per Å^3."""
        return rho_red / self.sigma ** 3

    @property
    def time_fs(self) -> float:
        """One reduced time unit in fs: sigma sqrt(m / epsilon)."""
        # a [Å/fs^2] = F [kcal/mol/Å] / m [amu] * KCAL_PER_AMU_A2_TO_A_PER_FS2
        return self.sigma / math.sqrt(self.epsilon / self.mass * KCAL_PER_AMU_A2_TO_A_PER_FS2)

    def force_kcal_per_A(self, f_red):
        """Reduced force -> kcal/mol/Å."""
        return f_red * self.epsilon / self.sigma
