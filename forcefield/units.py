"""Unit conversions used at the edges of the workbench.

The workbench works in Å, kcal/mol, kcal/mol/Å, fs, K and amu (the sGDML dataset units).
OpenMM works in nm, kJ/mol, ps; xTB (tblite) in Bohr and Hartree; ASE in Å and eV.
"""
from __future__ import annotations

KJ_PER_KCAL = 4.184
KCAL_PER_KJ = 1.0 / KJ_PER_KCAL
ANGSTROM_PER_NM = 10.0
BOHR_IN_ANGSTROM = 0.52917721067
HARTREE_IN_KCAL = 627.509474
EV_IN_KCAL = 23.060547830619
#: Boltzmann constant in kcal/(mol K)
KB_KCAL = 0.0019872041
#: 1 kcal/mol/(amu Å) expressed in Å/fs² (acceleration unit conversion for MD integrators)
KCAL_PER_AMU_A2_TO_A_PER_FS2 = 4.184e-4


def kT(temperature: float) -> float:
    """Thermal energy k_B T in kcal/mol at ``temperature`` in K."""
    return KB_KCAL * temperature
