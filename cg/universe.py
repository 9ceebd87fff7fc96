"""MDAnalysis pipeline: map an all-atom trajectory to an in-memory Universe of beads, or stream it to a file.

Positions are in Å. Forces inside MDAnalysis are in kJ/(mol Å) (as :mod:`forcefield.universe`); the
chunks yielded by :func:`iter_mapped` are in the workbench units kcal/mol/Å. Bead forces are the sums of
their atoms' forces (``Mapping.map_forces``; see :mod:`cg.forces`). When the trajectory has no forces, a
force provider (callable or object with ``.predict``, ``R Å -> F kcal/mol/Å``) can supply them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from forcefield.errors import InputError
from forcefield.units import KCAL_PER_KJ, KJ_PER_KCAL

from .forces import as_force_provider
from .mapping import Mapping


def _atoms_of(u: Any, mapping: Mapping) -> Any:
    atoms = getattr(u, "atoms", None)
    if atoms is None:
        raise InputError(f"expected an MDAnalysis Universe or AtomGroup, got {type(u).__name__}")
    if atoms.n_atoms != mapping.n_atoms:
        raise InputError(f"the mapping covers {mapping.n_atoms} atoms but the universe/group has {atoms.n_atoms}; "
                         "pass the same atom group the mapping was built from (e.g. u.select_atoms('protein'))")
    return atoms


def bead_universe(mapping: Mapping, atoms: Any = None) -> Any:
    """An MDAnalysis Universe (no frames) whose atoms are the beads: names, types, masses, bonds, residues.

    With ``atoms`` (the mapped AtomGroup) each bead takes the residue (name, id, segment) of its heaviest
    atom; otherwise all beads are in one residue ``CG``.
    """
    import MDAnalysis as mda

    n = mapping.n_beads
    if atoms is not None and hasattr(atoms, "resids"):
        heavy = [int(b[np.argmax(mapping.atom_masses[b])]) for b in mapping.beads]
        resix = np.asarray(atoms.resindices)[heavy]
        order = list(dict.fromkeys(resix.tolist()))
        bead_res = np.array([order.index(r) for r in resix])
        first = [heavy[int(np.flatnonzero(bead_res == k)[0])] for k in range(len(order))]
        resnames = [str(atoms[i].resname) for i in first]
        resids = [int(atoms[i].resid) for i in first]
    else:
        order, bead_res, resnames, resids = [0], np.zeros(n, dtype=int), ["CG"], [1]
    cgu = mda.Universe.empty(n, n_residues=len(order), atom_resindex=bead_res, trajectory=True)
    names = [str(x)[:4] for x in mapping.names]
    cgu.add_TopologyAttr("names", names)
    cgu.add_TopologyAttr("types", names)
    cgu.add_TopologyAttr("masses", mapping.masses)
    cgu.add_TopologyAttr("resnames", resnames)
    cgu.add_TopologyAttr("resids", resids)
    cgu.add_TopologyAttr("segids", ["CG"])
    cgu.add_TopologyAttr("chainIDs", ["A"] * n)
    cgu.add_TopologyAttr("bonds", [tuple(map(int, b)) for b in mapping.bonds])
    return cgu


def iter_mapped(u: Any, mapping: Mapping, start: int | None = None, stop: int | None = None,
                step: int | None = None, chunk: int = 1000, forces: Any = "auto", unwrap: bool = False,
                progress: bool = False) -> Iterator[dict[str, Any]]:
    """Stream bead coordinates over a trajectory, ``chunk`` frames at a time.

    Parameters
    ----------
    u : Universe or AtomGroup with the mapping's atoms (in order).
    start, stop, step : frame slice.
    chunk : frames per yielded chunk (memory: chunk × atoms × 3 floats).
    forces : ``"auto"`` (trajectory forces when present), ``None``/``False`` (no forces), or a force
        provider (callable or object with ``.predict``) used when the trajectory lacks forces
        (``R (M, N, 3) Å -> F kcal/mol/Å``, or ``(E, F)``).
    unwrap : make molecules whole across periodic boundaries first (needs bonds).

    Yields
    ------
    dict with ``positions`` (c, n_beads, 3) Å, ``forces`` (c, n_beads, 3) kcal/mol/Å or None,
    ``dimensions`` (c, 6) or None, ``frames`` (c,) frame indices, ``times`` (c,) ps.
    """
    from tqdm.auto import tqdm

    atoms = _atoms_of(u, mapping)
    traj = atoms.universe.trajectory
    provider = None if forces in ("auto", None, False) else as_force_provider(forces)
    use_traj_forces = forces == "auto" or provider is not None
    C, W = mapping.matrix(), mapping.force_matrix()
    frames = range(len(traj))[slice(start, stop, step)]
    if len(frames) == 0:
        raise InputError(f"no frames in range start={start} stop={stop} step={step} ({len(traj)} frames)")
    chunk = max(1, int(chunk))
    has_f = None
    for c0 in tqdm(range(0, len(frames), chunk), desc="mapping frames", disable=not progress, unit="chunk"):
        idx = frames[c0:c0 + chunk]
        R, F, dims, times = [], [], [], []
        for ts in traj[list(idx)]:
            R.append(atoms.unwrap(compound="fragments", inplace=False) if unwrap else atoms.positions)
            if has_f is None:
                has_f = bool(getattr(ts, "has_forces", False)) and use_traj_forces
            if has_f:
                F.append(atoms.forces.astype(np.float64) * KCAL_PER_KJ)
            dims.append(ts.dimensions if ts.dimensions is not None else np.zeros(6))
            times.append(ts.time)
        R = np.asarray(R, dtype=np.float64)
        if has_f:
            Fa = np.asarray(F)
        elif provider is not None:
            Fa = provider(R)
        else:
            Fa = None
        dims = np.asarray(dims, dtype=np.float64)
        yield {
            "positions": np.einsum("bn,mnd->mbd", C, R),
            "forces": None if Fa is None else np.einsum("bn,mnd->mbd", W, Fa),
            "dimensions": dims if (dims > 0).any() else None,
            "frames": np.asarray(idx), "times": np.asarray(times, dtype=np.float64),
        }


def map_universe(u: Any, mapping: Mapping, start: int | None = None, stop: int | None = None,
                 step: int | None = None, chunk: int = 1000, forces: Any = "auto", unwrap: bool = False,
                 progress: bool = False) -> Any:
    """An in-memory MDAnalysis Universe of beads with mapped positions and (when available) forces.

    ``u`` is the Universe or the AtomGroup the mapping was built from. Frames are read in chunks, so
    only the bead trajectory is kept in memory. Forces come from the trajectory (e.g. TRR, H5MD) or from
    ``forces`` (a force provider, see :func:`iter_mapped`) and are stored in MDAnalysis units
    kJ/(mol Å) (``cgu.atoms.forces``); bead names, masses (sums of atom masses) and bonds come from the
    mapping. Write it with any MDAnalysis writer or :func:`forcefield.universe.write_universe`.
    """
    from MDAnalysis.coordinates.memory import MemoryReader

    atoms = _atoms_of(u, mapping)
    pos, frc, dims, times = [], [], [], []
    for ch in iter_mapped(atoms, mapping, start, stop, step, chunk, forces, unwrap, progress):
        pos.append(ch["positions"].astype(np.float32))
        if ch["forces"] is not None:
            frc.append((ch["forces"] * KJ_PER_KCAL).astype(np.float32))
        dims.append(ch["dimensions"])
        times.append(ch["times"])
    cgu = bead_universe(mapping, atoms)
    t = np.concatenate(times)
    dt = float(t[1] - t[0]) if len(t) > 1 and t[1] > t[0] else 1.0
    D = None if any(d is None for d in dims) else np.concatenate(dims).astype(np.float32)
    cgu.load_new(np.concatenate(pos), format=MemoryReader, order="fac",
                 forces=np.concatenate(frc) if frc else None, dimensions=D, dt=dt)
    return cgu


def write_mapped(u: Any, mapping: Mapping, path: str | os.PathLike, pdb: str | os.PathLike | None = None,
                 start: int | None = None, stop: int | None = None, step: int | None = None, chunk: int = 1000,
                 forces: Any = "auto", unwrap: bool = False, progress: bool = False) -> Path:
    """Stream the mapped trajectory to ``path`` (any MDAnalysis writer: .xtc, .dcd, .trr (with forces), .pdb).

    Only one chunk is in memory at a time. For trajectory formats a PDB of the beads (first frame, with
    bead bonds) is written beside it (``pdb``, default same stem ``.pdb``). Writes are atomic.
    """
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    from forcefield.fileio import atomic_path

    atoms = _atoms_of(u, mapping)
    path = Path(path)
    cgu = bead_universe(mapping, atoms)
    pdb_done = path.suffix.lower() == ".pdb"
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        with mda.Writer(str(tmp), mapping.n_beads) as w:
            for ch in iter_mapped(atoms, mapping, start, stop, step, chunk, forces, unwrap, progress):
                f = None if ch["forces"] is None else (ch["forces"] * KJ_PER_KCAL).astype(np.float32)
                cgu.load_new(ch["positions"].astype(np.float32), format=MemoryReader, order="fac", forces=f,
                             dimensions=None if ch["dimensions"] is None else ch["dimensions"].astype(np.float32))
                if not pdb_done:
                    cgu.trajectory[0]
                    with atomic_path(Path(pdb) if pdb else path.with_suffix(".pdb")) as ptmp:
                        with mda.Writer(str(ptmp), mapping.n_beads) as pw:
                            pw.write(cgu.atoms)
                    pdb_done = True
                for ts, t in zip(cgu.trajectory, ch["times"]):
                    ts.time = t
                    w.write(cgu.atoms)
    return path
