"""MDAnalysis edge of backmapping: read AA/CG inputs as arrays, build AA Universes from generated frames.

A model keeps the AA topology as PDB text (names, residues, elements, bonds as CONECT records), so a
backmapped trajectory comes back as a Universe with the original topology even when only the CG trajectory
is at hand. Units: Å.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from forcefield.errors import InputError
from forcefield.universe import elements_of


def _is_universe(obj: Any) -> bool:
    return hasattr(obj, "trajectory") and hasattr(obj, "atoms")


def topology_pdb_text(u: Any) -> str:
    """PDB text (first frame, with CONECT bonds when the topology has them) of a Universe or AtomGroup."""
    import MDAnalysis as mda

    atoms = u.atoms
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "top.pdb"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mda.Writer(str(p), atoms.n_atoms) as w:
                w.write(atoms)
        return p.read_text()


def universe_from_pdb_text(text: str, R: np.ndarray | None = None) -> Any:
    """A Universe with the topology of PDB ``text`` and, when given, frames R (F, N, 3) in memory."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader
    from MDAnalysis.lib.util import NamedStream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe(NamedStream(io.StringIO(text), "topology.pdb"), format="PDB")
    if R is not None:
        R = np.asarray(R, dtype=np.float32).reshape(-1, u.atoms.n_atoms, 3)
        u.load_new(R, format=MemoryReader, order="fac")
    return u


def aa_arrays(aa: Any, source: str = "AA input") -> tuple[np.ndarray, np.ndarray, str | None]:
    """(R (M, N, 3), z (N,), topology PDB text or None) of an AA Universe, Dataset or array.

    A :class:`forcefield.Dataset` made by OpenMM keeps its PDB text in ``extra["pdb"]``.
    """
    from forcefield.dataset import Dataset

    if _is_universe(aa):
        R = np.stack([aa.atoms.positions.astype(np.float64) for _ in aa.trajectory])
        z = elements_of(aa.atoms, str(getattr(aa.trajectory, "filename", None) or source))
        return R, z, topology_pdb_text(aa)
    if isinstance(aa, Dataset):
        pdb = aa.extra.get("pdb")
        return np.asarray(aa.R, dtype=float), np.asarray(aa.z), (str(np.asarray(pdb).item()) if pdb is not None else None)
    raise InputError(f"{source}: expected an MDAnalysis Universe or a forcefield.Dataset, got {type(aa).__name__}")


def cg_positions(cg: Any, n_beads: int, names: list[str] | None = None, source: str = "CG input") -> np.ndarray:
    """Bead positions (F, n, 3) in Å from a CG Universe/AtomGroup, a Dataset or an array; checks the bead count.

    When the CG topology names its beads with exactly the model's bead names but in another order, this is
    reported rather than silently mis-assigned.
    """
    from forcefield.dataset import Dataset

    if _is_universe(cg):
        atoms = cg.atoms
        src = str(getattr(cg.trajectory, "filename", None) or source)
        if atoms.n_atoms != n_beads:
            raise InputError(f"{src}: the CG input has {atoms.n_atoms} beads, but the model was trained for "
                             f"{n_beads} beads")
        if names is not None and hasattr(atoms, "names"):
            got = [str(x)[:4] for x in atoms.names]  # CG universes may shorten names to PDB's 4 characters
            want = [str(x)[:4] for x in names]
            if sorted(got) == sorted(want) and got != want and len(set(want)) == len(want):
                raise InputError(f"{src}: bead names {got} are the model's {want} in another order")
        X = np.stack([atoms.positions.astype(np.float64) for _ in cg.trajectory])
    elif isinstance(cg, Dataset):
        X = np.asarray(cg.R, dtype=float)
        src = cg.source or source
    else:
        X = np.asarray(cg, dtype=float)
        src = source
        if X.ndim == 2:
            X = X[None]
    if X.ndim != 3 or X.shape[-1] != 3:
        raise InputError(f"{src}: expected bead positions of shape (frames, beads, 3), got {X.shape}")
    if X.shape[1] != n_beads:
        raise InputError(f"{src}: the CG input has {X.shape[1]} beads, but the model was trained for {n_beads} beads")
    if not np.isfinite(X).all():
        f = int(np.flatnonzero(~np.isfinite(X).all(axis=(1, 2)))[0])
        raise InputError(f"{src}: frame {f} has non-finite bead positions")
    return X


def write_aa(u: Any, path: str | os.PathLike) -> Path:
    """Write a backmapped Universe: ``.pdb`` (all frames as MODELs) or a trajectory plus a PDB beside it."""
    from forcefield.universe import write_universe

    return write_universe(u, path)


def cg_universe(X: np.ndarray, names: list[str] | None = None) -> Any:
    """An in-memory CG Universe: one atom per bead (name = bead name, one residue per bead), frames X (F, n, 3)."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        X = X[None]
    n = X.shape[1]
    names = list(names) if names is not None else [f"B{i}" for i in range(n)]
    u = mda.Universe.empty(n, n_residues=n, atom_resindex=np.arange(n), trajectory=False)
    u.add_TopologyAttr("names", names)
    u.add_TopologyAttr("types", ["CG"] * n)
    u.add_TopologyAttr("resnames", [str(nm)[:4] for nm in names])
    u.add_TopologyAttr("resids", np.arange(1, n + 1))
    u.load_new(X, format=MemoryReader, order="fac")
    return u
