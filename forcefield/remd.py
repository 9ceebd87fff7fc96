"""Temperature replica exchange (parallel tempering): the exchange rule, written once.

Used by the OpenMM reference sampler (:func:`forcefield.reference.run_openmm_remd`, one replica per
temperature) and by the batched torch simulator (:func:`forcefield.langevin.simulate` with a
:class:`TemperatureLadders`, e.g. kernel force-field MD), where many independent ladders run as one batch.

Neighbouring temperatures try to swap (alternating even and odd pairs) with the Metropolis rule
``p = min(1, exp[(β_i − β_j)(U_i − U_j)])``, which keeps every temperature's canonical distribution
(Sugita & Okamoto, Chem. Phys. Lett. 314, 141, 1999); swapped velocities are rescaled by sqrt(T_new / T_old).
Units: K, kcal/mol.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .units import KB_KCAL


def geometric_temperatures(t_min: float, t_max: float, n: int) -> np.ndarray:
    """``n`` temperatures spaced geometrically from ``t_min`` to ``t_max`` (equal acceptance for constant C_v)."""
    if n < 2 or not 0 < t_min < t_max:
        raise InputError(f"need n >= 2 and 0 < t_min < t_max, got n={n}, t_min={t_min}, t_max={t_max}")
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


def exchange_probability(beta_i: float, beta_j: float, u_i: float, u_j: float) -> float:
    """Metropolis probability of swapping the configurations (energies u_i, u_j, kcal/mol) of replicas at
    inverse temperatures beta_i, beta_j (mol/kcal): ``min(1, exp((β_i - β_j)(u_i - u_j)))``."""
    d = (beta_i - beta_j) * (u_i - u_j)
    return 1.0 if d >= 0 else float(np.exp(d))


def exchange_sweep(betas: np.ndarray, energies: np.ndarray, rng: np.random.Generator, parity: int,
                   active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sweep of neighbour swaps over pairs (k, k+1) with k = parity, parity + 2, ...

    Parameters
    ----------
    betas : (n,) inverse temperatures of the slots (mol/kcal), in order.
    energies : (n,) energies of the configurations now in each slot (kcal/mol; potential energy, plus P·V
        at constant pressure).
    rng, parity : random generator; 0 for pairs (0,1), (2,3), ..., 1 for (1,2), (3,4), ...
    active : (n,) bool; a pair with an inactive slot (a stopped replica) is not attempted.

    Returns
    -------
    perm : (n,) slot k takes the configuration that was in slot ``perm[k]``.
    accepted : (n-1,) bool, whether pair (k, k+1) swapped (False for pairs not attempted).
    """
    n = len(betas)
    perm = np.arange(n)
    acc = np.zeros(max(n - 1, 0), dtype=bool)
    for k in range(int(parity) % 2, n - 1, 2):
        if active is not None and not (active[k] and active[k + 1]):
            continue
        if rng.random() < exchange_probability(betas[k], betas[k + 1], energies[k], energies[k + 1]):
            perm[k], perm[k + 1] = k + 1, k
            acc[k] = True
    return perm, acc


class TemperatureLadders:
    """Replica exchange for a batch of ``n_ladders × len(temperatures)`` walkers in one Langevin run.

    Walker ``b`` belongs to ladder ``b // n_T`` and starts at slot ``b % n_T`` (temperature
    ``temperatures[b % n_T]``). Every ``every`` steps, :func:`forcefield.langevin.simulate` calls the object:
    within each ladder, neighbouring slots try to swap temperatures (the walkers keep their positions; the
    swapped walkers' velocities are rescaled), alternating even and odd pairs. The current temperature of
    every walker is :attr:`walker_temperature`; ``simulate`` records it with every saved frame.

    Parameters
    ----------
    temperatures : (n_T,) K, the target first and increasing (e.g. :func:`geometric_temperatures`).
    n_ladders : independent ladders in the batch.
    every : MD steps between exchange sweeps.
    seed : seed of the acceptance draws.
    """

    def __init__(self, temperatures: Sequence[float], n_ladders: int, every: int, seed: int = 0) -> None:
        T = np.asarray(temperatures, dtype=float).ravel()
        if len(T) < 1 or (T <= 0).any() or (np.diff(T) <= 0).any():
            raise InputError(f"temperatures must be positive and increasing, got {T.tolist()}")
        if n_ladders < 1 or every < 1:
            raise InputError(f"need n_ladders >= 1 and every >= 1, got {n_ladders}, {every}")
        self.temperatures, self.n_ladders, self.every = T, int(n_ladders), int(every)
        self.n_T = len(T)
        self.betas = 1.0 / (KB_KCAL * T)
        # walker_of[l, k]: the walker now at slot k of ladder l
        self.walker_of = np.arange(self.n_ladders * self.n_T).reshape(self.n_ladders, self.n_T)
        self.rng = np.random.default_rng(seed)
        self.attempts = np.zeros(max(self.n_T - 1, 0))
        self.accepts = np.zeros(max(self.n_T - 1, 0))
        self._sweeps = 0

    @classmethod
    def geometric(cls, t_min: float, t_max: float, n_temperatures: int, n_walkers: int, every: int,
                  seed: int = 0, what: str = "") -> "TemperatureLadders":
        """Ladders of ``n_temperatures`` geometric temperatures from ``t_min`` to ``t_max`` (K) over ``n_walkers``
        walkers; InputError (prefixed with ``what``) unless the walkers fill whole ladders and t_max > t_min."""
        if n_walkers % n_temperatures or not t_max > t_min:
            raise InputError(f"{what}replicas ({n_walkers}) must be a multiple of temperatures ({n_temperatures}) "
                             f"and max_temperature ({t_max} K) above the target temperature ({t_min} K)")
        return cls(geometric_temperatures(t_min, t_max, n_temperatures), n_walkers // n_temperatures, every, seed)

    @property
    def n_walkers(self) -> int:
        return self.n_ladders * self.n_T

    @property
    def walker_temperature(self) -> np.ndarray:
        """(B,) temperature (K) each walker has now."""
        out = np.empty(self.n_walkers)
        for k in range(self.n_T):
            out[self.walker_of[:, k]] = self.temperatures[k]
        return out

    @property
    def acceptance(self) -> np.ndarray:
        """Accepted / attempted swaps per neighbour pair (NaN where none was attempted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.attempts > 0, self.accepts / np.maximum(self.attempts, 1), np.nan)

    def __call__(self, energies: torch.Tensor, v: torch.Tensor, alive: torch.Tensor) -> bool:
        """One exchange sweep; rescales swapped walkers' velocities ``v`` (B, N, 3) in place. Returns whether
        any temperature changed (then the caller updates its per-walker noise amplitudes)."""
        if self.n_T < 2:
            return False
        E = energies.detach().cpu().double().numpy()
        ok = alive.detach().cpu().numpy()
        parity = self._sweeps % 2
        self._sweeps += 1
        old_T = self.walker_temperature
        for ladder in self.walker_of:
            active = ok[ladder] & np.isfinite(E[ladder])
            perm, acc = exchange_sweep(self.betas, E[ladder], self.rng, parity, active)
            tried = np.zeros(self.n_T - 1, dtype=bool)
            tried[parity::2] = True
            tried &= active[:-1] & active[1:]
            self.attempts += tried
            self.accepts += acc
            ladder[:] = ladder[perm]
        new_T = self.walker_temperature
        changed = np.flatnonzero(new_T != old_T)
        if len(changed) == 0:
            return False
        scale = torch.as_tensor(np.sqrt(new_T[changed] / old_T[changed]), dtype=v.dtype, device=v.device)
        idx = torch.as_tensor(changed, device=v.device)
        v[idx] = v[idx] * scale[:, None, None]
        return True
