"""The workbench's dataset type: sGDML-format ``.npz`` files and MDAnalysis conversion.

A :class:`Dataset` holds M geometries of one molecule with N atoms:

* ``R`` (M, N, 3) positions in Å,
* ``z`` (N,) atomic numbers,
* ``E`` (M,) energies in kcal/mol (optional),
* ``F`` (M, N, 3) forces in kcal/mol/Å (optional).

Files use the sGDML layout (keys ``R, z, E, F, name, theory, type, md5, r_unit, e_unit``;
optional ``lattice``, ``perms``), so MD17/MD22 downloads load directly and files written here
pass sgdml 1.0.3's fingerprint checks.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .elements import check_z, masses, symbols
from .errors import InputError, where
from .fileio import load_npz, save_npz


def sgdml_md5(z: np.ndarray, R: np.ndarray, E: np.ndarray | None, F: np.ndarray) -> str:
    """Fingerprint of a dataset as sgdml 1.0.3 computes it.

    MD5 over the MD5 digests of the raw bytes of ``z``, ``R``, (``E``,) ``F`` in that order
    (each array flattened in C order, its dtype as stored).
    """
    h = hashlib.md5()
    for a in (z, R, E, F):
        if a is None:
            continue
        h.update(hashlib.md5(np.ascontiguousarray(a).ravel()).digest())
    return h.hexdigest()


def _scalar_str(a: Any) -> str:
    a = np.asarray(a)
    v = a.item() if a.size == 1 else a
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class Dataset:
    """Geometries of one molecule with optional energies and forces (Å, kcal/mol, kcal/mol/Å).

    Parameters
    ----------
    R : (M, N, 3) array of positions in Å.
    z : (N,) integer array of atomic numbers.
    E : (M,) energies in kcal/mol, or None.
    F : (M, N, 3) forces in kcal/mol/Å, or None.
    name, theory : free-text labels stored in the file.
    lattice : (3, 3) lattice vectors in Å for periodic systems, or None.
    extra : further arrays kept on round trips (e.g. ``perms``, ``topology`` text, ``names``).
    source : where the data came from (used in error messages).
    """

    R: np.ndarray
    z: np.ndarray
    E: np.ndarray | None = None
    F: np.ndarray | None = None
    name: str = "dataset"
    theory: str = "unknown"
    lattice: np.ndarray | None = None
    r_unit: str = "Ang"
    e_unit: str = "kcal/mol"
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check shapes, dtypes and finiteness; raise :class:`InputError` naming file and frame."""
        src = self.source
        self.z = check_z(self.z, src)
        n = len(self.z)
        R = np.asarray(self.R)
        if R.ndim == 2 and R.shape[1] == 3 * n:  # sGDML also accepts (M, 3N)
            R = R.reshape(len(R), n, 3)
        if R.ndim != 3 or R.shape[1:] != (n, 3):
            raise InputError(f"{where(src)}R must have shape (M, {n}, 3) for {n} atoms in z, got {R.shape}")
        if not np.issubdtype(R.dtype, np.floating):
            raise InputError(f"{where(src)}R must be floating point, got dtype {R.dtype}")
        self.R = R
        _check_finite(R, "coordinates R", src)
        m = len(R)
        if self.F is not None:
            F = np.asarray(self.F)
            if F.ndim == 2 and F.shape[1] == 3 * n:
                F = F.reshape(len(F), n, 3)
            if F.shape != R.shape:
                raise InputError(f"{where(src)}F must have the shape of R {R.shape}, got {F.shape}")
            _check_finite(F, "forces F", src)
            self.F = F
        if self.E is not None:
            E = np.asarray(self.E)
            if E.size != m:
                raise InputError(f"{where(src)}E must hold one energy per frame ({m}), got shape {E.shape}")
            E = E.reshape(m) if E.ndim != 1 and E.shape != (m, 1) else E
            _check_finite(E.reshape(m), "energies E", src)
            self.E = E
        if self.lattice is not None:
            lat = np.asarray(self.lattice, dtype=float)
            if lat.shape != (3, 3):
                raise InputError(f"{where(src)}lattice must be (3, 3), got {lat.shape}")
            self.lattice = lat

    # ------------------------------------------------------------------ basics
    @property
    def n_atoms(self) -> int:
        return len(self.z)

    @property
    def symbols(self) -> list[str]:
        return symbols(self.z)

    @property
    def masses(self) -> np.ndarray:
        return masses(self.z)

    def __len__(self) -> int:
        return len(self.R)

    def subset(self, idx: Any) -> "Dataset":
        """A new dataset with frames ``idx`` (slice, index array or boolean mask)."""
        idx = np.arange(len(self))[idx]
        return Dataset(
            R=self.R[idx], z=self.z, E=None if self.E is None else self.E[idx],
            F=None if self.F is None else self.F[idx], name=self.name, theory=self.theory,
            lattice=self.lattice, r_unit=self.r_unit, e_unit=self.e_unit, extra=dict(self.extra),
            source=self.source,
        )

    __getitem__ = subset

    @staticmethod
    def concatenate(parts: list["Dataset"]) -> "Dataset":
        """Join datasets of the same molecule frame-wise."""
        if not parts:
            raise InputError("no datasets to concatenate")
        z = parts[0].z
        for p in parts[1:]:
            if not np.array_equal(p.z, z):
                raise InputError(f"{where(p.source)}atoms differ from {parts[0].source or 'the first dataset'}")
        has_E = all(p.E is not None for p in parts)
        has_F = all(p.F is not None for p in parts)
        return Dataset(
            R=np.concatenate([p.R for p in parts]), z=z,
            E=np.concatenate([p.E for p in parts]) if has_E else None,
            F=np.concatenate([p.F for p in parts]) if has_F else None,
            name=parts[0].name, theory=parts[0].theory, lattice=parts[0].lattice, extra=dict(parts[0].extra),
        )

    def md5(self) -> str:
        """sgdml-compatible fingerprint (see :func:`sgdml_md5`). Requires forces."""
        if self.F is None:
            raise InputError(f"{where(self.source)}the sGDML fingerprint needs forces F")
        return sgdml_md5(self.z, self.R, self.E, self.F)

    def summary(self) -> str:
        """One-paragraph human-readable description."""
        s = [f"{self.name}: {len(self)} frames x {self.n_atoms} atoms ({''.join(_formula(self.symbols))}), theory {self.theory}"]
        if self.E is not None:
            s.append(f"  E: mean {np.mean(self.E):.3f}, std {np.std(self.E):.3f} {self.e_unit}")
        if self.F is not None:
            s.append(f"  |F| rms {np.sqrt(np.mean(self.F**2)):.3f} {self.e_unit}/{self.r_unit}")
        return "\n".join(s)

    # ------------------------------------------------------------------ files
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sGDML dictionary of arrays written by :meth:`save`."""
        out: dict[str, np.ndarray] = {
            "type": np.array("d"), "name": np.array(self.name), "theory": np.array(self.theory),
            "R": self.R, "z": self.z, "r_unit": np.array(self.r_unit), "e_unit": np.array(self.e_unit),
        }
        if self.E is not None:
            out["E"] = self.E
        if self.F is not None:
            out["F"] = self.F
            out["md5"] = np.array(self.md5().encode())
        if self.lattice is not None:
            out["lattice"] = self.lattice
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def save(self, path: str | os.PathLike, compressed: bool = False) -> Path:
        """Write an sGDML-format ``.npz`` atomically; arrays keep their dtypes bit-exactly."""
        path = Path(path)
        save_npz(path, compressed=compressed, **self.to_arrays())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Dataset":
        """Read an sGDML-format ``.npz`` (MD17/MD22 files too) without unpickling."""
        src = str(path)
        f = load_npz(path)
        for key in ("R", "z"):
            if key not in f:
                raise InputError(f"{src}: missing array {key!r}; an sGDML dataset needs R and z (and E, F)")
        if "type" in f and _scalar_str(f["type"]) != "d":
            raise InputError(f"{src}: type is {_scalar_str(f['type'])!r}, expected 'd' (a dataset, not a model)")
        known = {"R", "z", "E", "F", "name", "theory", "type", "md5", "r_unit", "e_unit", "lattice"}
        ds = cls(
            R=f["R"], z=f["z"], E=f.get("E"), F=f.get("F"),
            name=_scalar_str(f["name"]) if "name" in f else Path(src).stem,
            theory=_scalar_str(f["theory"]) if "theory" in f else "unknown",
            lattice=f.get("lattice"), r_unit=_scalar_str(f.get("r_unit", "Ang")),
            e_unit=_scalar_str(f.get("e_unit", "kcal/mol")),
            extra={k: v for k, v in f.items() if k not in known}, source=src,
        )
        if "md5" in f and ds.F is not None and _scalar_str(f["md5"]) != ds.md5():
            raise InputError(f"{src}: stored md5 {_scalar_str(f['md5'])} does not match the data ({ds.md5()}); file corrupt?")
        return ds

    # ------------------------------------------------------------------ MDAnalysis
    @classmethod
    def from_universe(cls, u: Any, selection: str = "all", start: int | None = None, stop: int | None = None,
                      step: int | None = None, name: str | None = None, theory: str = "trajectory") -> "Dataset":
        """Frames of an MDAnalysis Universe (or AtomGroup) as a dataset.

        Forces are read when the trajectory has them (e.g. TRR); MDAnalysis reports them in
        kJ/(mol Å) and they are converted to kcal/mol/Å here. Elements come from the topology's
        ``elements`` attribute, or are guessed from atom names/types.
        """
        from .universe import dataset_from_universe

        return dataset_from_universe(cls, u, selection, start, stop, step, name, theory)

    def to_universe(self, topology: Any = None) -> Any:
        """An in-memory MDAnalysis Universe with these positions and forces (kJ/(mol Å) inside MDAnalysis).

        ``topology`` may be a Universe/AtomGroup or a topology file with the same atoms; without it a
        minimal topology (one residue, element names) is built.
        """
        from .universe import universe_from_dataset

        return universe_from_dataset(self, topology)


def _check_finite(a: np.ndarray, what: str, src: str | None) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        idx = np.argwhere(bad)[0]
        if a.ndim == 3:
            msg = f"frame {idx[0]}, atom {idx[1]}"
        else:
            msg = f"frame {idx[0]}"
        raise InputError(f"{where(src)}{what} contain NaN or infinite values (first at {msg})")


def _formula(sym: list[str]) -> list[str]:
    from collections import Counter

    c = Counter(sym)
    order = [s for s in ("C", "H") if s in c] + sorted(s for s in c if s not in ("C", "H"))
    return [f"{s}{c[s] if c[s] > 1 else ''}" for s in order]


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Load an sGDML-format ``.npz`` dataset (see :meth:`Dataset.load`)."""
    return Dataset.load(path)
