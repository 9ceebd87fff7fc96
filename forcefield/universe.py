"""MDAnalysis edge: open user files with clear errors, convert Universes to and from :class:`Dataset`.

MDAnalysis stores forces in kJ/(mol Å); the workbench in kcal/mol/Å. Conversion happens here only.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .elements import atomic_number
from .errors import InputError, where
from .units import KCAL_PER_KJ, KJ_PER_KCAL


def open_universe(topology: str | os.PathLike, *trajectory: str | os.PathLike, **kwargs: Any) -> Any:
    """``MDAnalysis.Universe(topology, *trajectory)`` with clear errors for missing or mismatched files."""
    import MDAnalysis as mda

    for p in (topology, *trajectory):
        if not Path(p).exists():
            raise InputError(f"{p}: no such file")
    try:
        top = mda.Universe(str(topology), **kwargs)
    except Exception as e:  # noqa: BLE001 - MDAnalysis raises many types
        raise InputError(f"{topology}: MDAnalysis could not read this topology ({e})") from e
    if not trajectory:
        return top
    try:
        return mda.Universe(str(topology), *[str(t) for t in trajectory], **kwargs)
    except Exception:  # noqa: BLE001 - find the file at fault for a clear message
        pass
    for t in trajectory:
        try:
            mda.Universe(str(topology), str(t), **kwargs)
        except ValueError as e:
            msg = str(e)
            if "atoms" in msg.lower():
                raise InputError(
                    f"{t}: atom count does not match topology {topology} ({top.atoms.n_atoms} atoms): {msg}"
                ) from e
            raise InputError(f"{t}: MDAnalysis could not read this trajectory ({msg})") from e
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{t}: MDAnalysis could not read this trajectory ({e})") from e
    raise InputError(f"{', '.join(map(str, trajectory))}: MDAnalysis could not read these trajectories together")


def elements_of(atoms: Any, source: str | None = None) -> np.ndarray:
    """Atomic numbers of an AtomGroup: its ``elements`` attribute, else guessed from names/types."""
    els = None
    if hasattr(atoms, "elements"):
        els = [str(e) for e in atoms.elements]
        if any(not e.strip() for e in els):
            els = None
    if els is None:
        from MDAnalysis.guesser.default_guesser import DefaultGuesser

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = atoms.types if hasattr(atoms, "types") else atoms.names
            els = [DefaultGuesser(None).guess_atom_element(n) for n in names]
            if any(not e for e in els):
                els = [DefaultGuesser(None).guess_atom_element(n) for n in atoms.names]
    z = []
    for i, e in enumerate(els):
        try:
            z.append(atomic_number(e, source, atom=i))
        except InputError:
            nm = atoms.names[i] if hasattr(atoms, "names") else "?"
            raise InputError(
                f"{where(source)}unknown element {e!r} for atom {i} (name {nm!r}); expected an element symbol"
            ) from None
    return np.array(z, dtype=np.int64)


def dataset_from_universe(cls: type, u: Any, selection: str, start: int | None, stop: int | None,
                          step: int | None, name: str | None, theory: str) -> Any:
    atoms = u.select_atoms(selection) if selection != "all" else u.atoms  # u: Universe or AtomGroup
    if atoms.n_atoms == 0:
        raise InputError(f"selection {selection!r} matches no atoms")
    u = atoms.universe
    source = str(getattr(u.trajectory, "filename", None) or "universe")
    z = elements_of(atoms, source)
    R, F = [], []
    has_forces = None
    for ts in u.trajectory[start:stop:step]:
        R.append(atoms.positions.astype(np.float64))
        if has_forces is None:
            has_forces = bool(getattr(ts, "has_forces", False))
        if has_forces:
            F.append(atoms.forces.astype(np.float64) * KCAL_PER_KJ)
    if not R:
        raise InputError(f"{source}: no frames in range start={start} stop={stop} step={step}")
    return cls(
        R=np.stack(R), z=z, F=np.stack(F) if has_forces else None,
        name=name or Path(source).stem, theory=theory, source=source,
        extra={"atom_names": np.array([str(n) for n in atoms.names])} if hasattr(atoms, "names") else {},
    )


def universe_from_dataset(ds: Any, topology: Any = None) -> Any:
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    forces = None if ds.F is None else (ds.F * KJ_PER_KCAL).astype(np.float32)
    if topology is None:
        u = mda.Universe.empty(ds.n_atoms, n_residues=1, atom_resindex=np.zeros(ds.n_atoms, dtype=int), trajectory=False)
        names = ds.extra.get("atom_names")
        sym = ds.symbols
        u.add_TopologyAttr("names", [str(n) for n in names] if names is not None else sym)
        u.add_TopologyAttr("elements", sym)
        u.add_TopologyAttr("types", sym)
        u.add_TopologyAttr("masses", ds.masses)
        u.add_TopologyAttr("resnames", ["MOL"])
        u.add_TopologyAttr("resids", [1])
    else:
        if isinstance(topology, (str, os.PathLike)):
            u = mda.Universe(str(topology))
        else:
            u = mda.Merge(topology.atoms)
        if u.atoms.n_atoms != ds.n_atoms:
            raise InputError(
                f"{where(ds.source)}dataset has {ds.n_atoms} atoms but topology has {u.atoms.n_atoms}"
            )
    u.load_new(ds.R.astype(np.float32), format=MemoryReader, forces=forces, order="fac")
    return u


def write_universe(u: Any, path: str | os.PathLike, pdb: str | os.PathLike | None = None) -> Path:
    """Write every frame of ``u`` with MDAnalysis (format from the extension: .dcd, .xtc, .trr, .pdb, ...).

    For a trajectory format a PDB of the first frame (topology and bonds) is written beside it
    (``pdb``, default: same stem with ``.pdb``). Files are written to a temporary name and renamed.
    """
    import MDAnalysis as mda

    from .fileio import atomic_path

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() != ".pdb":
            pdb_path = Path(pdb) if pdb else path.with_suffix(".pdb")
            u.trajectory[0]
            with atomic_path(pdb_path) as tmp:
                with mda.Writer(str(tmp), u.atoms.n_atoms) as w:
                    w.write(u.atoms)
        with atomic_path(path) as tmp:
            with mda.Writer(str(tmp), u.atoms.n_atoms) as w:
                for _ in u.trajectory:
                    w.write(u.atoms)
    return path


def backbone_phi_psi_atoms(u: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Atom indices of the first backbone φ (C-N-CA-C) and ψ (N-CA-C-N) pair of a peptide, or None."""
    res = u.residues
    for k in range(1, len(res) - 1):
        try:
            c0 = res[k - 1].atoms.select_atoms("name C")[0].index
            n, ca, c = (res[k].atoms.select_atoms(f"name {x}")[0].index for x in ("N", "CA", "C"))
            n1 = res[k + 1].atoms.select_atoms("name N")[0].index
        except IndexError:
            continue
        return (int(c0), int(n), int(ca), int(c)), (int(n), int(ca), int(c), int(n1))
    return None


def bond_indices(u: Any) -> np.ndarray | None:
    """Bonds of a Universe as an (n_bonds, 2) int array, or None when it has none."""
    try:
        b = u.bonds.indices
    except Exception:  # noqa: BLE001 - topologies without bonds
        return None
    return np.asarray(b, dtype=int) if len(b) else None
