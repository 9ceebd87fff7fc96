"""Element data (symbols, masses in amu, covalent radii in Å) shared by every package."""
from __future__ import annotations

import numpy as np

from .errors import InputError, where

SYMBOLS = [
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
]
_Z_OF = {s.upper(): z for z, s in enumerate(SYMBOLS) if z > 0}
MAX_Z = len(SYMBOLS) - 1

MASSES = np.array([
    0.0, 1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180, 22.990, 24.305, 26.982,
    28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078, 44.956, 47.867, 50.942, 51.996, 54.938, 55.845,
    58.933, 58.693, 63.546, 65.38, 69.723, 72.630, 74.922, 78.971, 79.904, 83.798, 85.468, 87.62, 88.906,
    91.224, 92.906, 95.95, 98.0, 101.07, 102.91, 106.42, 107.87, 112.41, 114.82, 118.71, 121.76, 127.60,
    126.90, 131.29,
])

# Covalent radii (Å), Cordero et al., Dalton Trans. 2008 (sp3 carbon).
COVALENT_RADII = np.array([
    0.0, 0.31, 0.28, 1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58, 1.66, 1.41, 1.21, 1.11, 1.07, 1.05, 1.02,
    1.06, 2.03, 1.76, 1.70, 1.60, 1.53, 1.39, 1.39, 1.32, 1.26, 1.24, 1.32, 1.22, 1.22, 1.20, 1.19, 1.20, 1.20,
    1.16, 2.20, 1.95, 1.90, 1.75, 1.64, 1.54, 1.47, 1.46, 1.42, 1.39, 1.45, 1.44, 1.42, 1.39, 1.39, 1.38, 1.39,
    1.40,
])


def atomic_number(symbol: str, source: str | None = None, atom: int | None = None) -> int:
    """Atomic number of an element symbol (case-insensitive); clear error for unknown symbols."""
    z = _Z_OF.get(str(symbol).strip().upper())
    if z is None:
        at = f" (atom {atom})" if atom is not None else ""
        raise InputError(f"{where(source)}unknown element {symbol!r}{at}; expected a symbol such as H, C, N, O")
    return z


def check_z(z: np.ndarray, source: str | None = None) -> np.ndarray:
    """Validate atomic numbers; returns them unchanged (dtype kept) or raises :class:`InputError`."""
    z = np.asarray(z)
    if z.ndim != 1:
        raise InputError(f"{where(source)}z must be a 1-D array of atomic numbers, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.integer):
        raise InputError(f"{where(source)}z must hold integers (atomic numbers), got dtype {z.dtype}")
    bad = np.flatnonzero((z < 1) | (z > MAX_Z))
    if bad.size:
        raise InputError(
            f"{where(source)}unknown element: atom {int(bad[0])} has atomic number {int(z[bad[0]])}; "
            f"expected 1..{MAX_Z}"
        )
    return z


def symbols(z: np.ndarray) -> list[str]:
    """Element symbols for atomic numbers."""
    return [SYMBOLS[int(k)] for k in np.asarray(z)]


def masses(z: np.ndarray) -> np.ndarray:
    """Atomic masses (amu) for atomic numbers."""
    return MASSES[np.asarray(z, dtype=int)]


def repartitioned_masses(z: np.ndarray, bonds: np.ndarray, hydrogen_mass: float = 3.0) -> np.ndarray:
    """Hydrogen mass repartitioning: every hydrogen gets ``hydrogen_mass`` amu, taken from the heavy atom it is
    bonded to (total mass unchanged). Configurational (Boltzmann) averages do not depend on masses, so
    Langevin sampling with these masses samples the same ensemble with time steps about twice as long.
    ``bonds`` (k, 2) atom pairs, e.g. :func:`forcefield.geometry.covalent_bonds`."""
    from .errors import InputError

    m = masses(z).astype(float).copy()
    z = np.asarray(z, dtype=int)
    for i, j in np.asarray(bonds, dtype=int).reshape(-1, 2):
        for h, heavy in ((i, j), (j, i)):
            if z[h] == 1 and z[heavy] != 1:
                dm = hydrogen_mass - m[h]
                m[h] += dm
                m[heavy] -= dm
    if (m <= 0).any():
        raise InputError(f"hydrogen mass {hydrogen_mass} amu leaves atom {int(np.argmin(m))} with mass {m.min():.2f}")
    return m
