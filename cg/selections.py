"""Mappings from MDAnalysis atom groups: atom data, the atomic bond graph, beads from selection strings.

Bead membership is always expressed as 0-based indices *within the atom group* the mapping was built
from (``atoms[i]``), so a mapping made from ``u.select_atoms("protein")`` applies to that same group.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Mapping as TMapping, Sequence

import numpy as np

from forcefield.errors import InputError

#: Above this many atoms the covalent-radius bond guess (O(N^2) memory) is not used to complete bonds.
GUESS_BONDS_MAX_ATOMS = 5000


def atom_masses(atoms: Any) -> np.ndarray:
    """Masses (amu) of an AtomGroup: its ``masses`` when all positive, else from its elements."""
    m = np.asarray(getattr(atoms, "masses", np.zeros(0)), dtype=float)
    if m.shape == (atoms.n_atoms,) and (m > 0).all():
        return m
    from forcefield.elements import masses
    from forcefield.universe import elements_of

    return masses(elements_of(atoms))


def atom_bonds(atoms: Any, guess: bool | None = None) -> np.ndarray:
    """(n_bonds, 2) bonds (i < j, indices within ``atoms``) of an AtomGroup.

    Topology bonds inside the group are used; when ``guess`` is true (default: for groups of at most
    :data:`GUESS_BONDS_MAX_ATOMS` atoms) bonds from covalent radii on the current frame
    (:func:`forcefield.geometry.covalent_bonds`) are added, which completes PDB files whose CONECT
    records cover only hetero residues.
    """
    n = atoms.n_atoms
    pos = {int(ix): k for k, ix in enumerate(atoms.indices)}
    pairs = []
    try:
        top_bonds = atoms.bonds
    except Exception:  # noqa: BLE001 - no bonds attribute in this topology
        top_bonds = None
    if top_bonds is not None and len(top_bonds):
        for a, b in np.asarray(top_bonds.indices):
            if int(a) in pos and int(b) in pos:
                pairs.append((pos[int(a)], pos[int(b)]))
    if guess is None:
        guess = n <= GUESS_BONDS_MAX_ATOMS
    if guess and n > 1:
        from forcefield.geometry import covalent_bonds
        from forcefield.universe import elements_of

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = elements_of(atoms)
        pairs.extend(map(tuple, covalent_bonds(atoms.positions.astype(float), z)))
    if not pairs:
        return np.zeros((0, 2), dtype=int)
    b = np.sort(np.asarray(pairs, dtype=int), axis=1)
    b = b[b[:, 0] != b[:, 1]]
    return np.unique(b, axis=0)


def neighbours(n: int, bonds: np.ndarray) -> list[list[int]]:
    """Adjacency lists of the bond graph (:func:`forcefield.topology.neighbours`, argument order kept)."""
    from forcefield.topology import neighbours as _nb

    return _nb(bonds, n)


def attach_to_nearest_bead(assign: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Give every unassigned atom (``assign == -1``) the bead of its nearest assigned atom along bonds.

    Multi-source breadth-first search over the bond graph; ties (equal bond-path length) go to the
    lower bead index. Atoms not connected to any bead stay -1.
    """
    out = np.asarray(assign, dtype=int).copy()
    adj = neighbours(len(out), bonds)
    dist = np.where(out >= 0, 0, np.iinfo(int).max)
    queue = deque(sorted(np.flatnonzero(out >= 0), key=lambda i: (out[i], i)))
    while queue:
        i = queue.popleft()
        for j in adj[i]:
            if dist[j] > dist[i] + 1:
                dist[j], out[j] = dist[i] + 1, out[i]
                queue.append(j)
            elif dist[j] == dist[i] + 1 and out[i] < out[j] and assign[j] < 0:
                out[j] = out[i]
    return out


def describe_atom(atoms: Any, i: int) -> str:
    """``"atom 7 (ALA 2 N)"`` for reports."""
    try:
        a = atoms[int(i)]
        return f"atom {int(i)} ({a.resname} {a.resid} {a.name})"
    except Exception:  # noqa: BLE001 - minimal topologies
        return f"atom {int(i)}"


def group_info(atoms: Any) -> dict[str, Any]:
    """Masses, bonds and names of an AtomGroup (or Universe), as the Mapping constructor takes them."""
    atoms = getattr(atoms, "atoms", atoms)
    if atoms.n_atoms == 0:
        raise InputError("the atom group is empty; select the atoms to coarse-grain")
    names = [str(n) for n in atoms.names] if hasattr(atoms, "names") else None
    return {"atom_masses": atom_masses(atoms), "atom_bonds": atom_bonds(atoms), "atom_names": names}


def from_selections(cls: type, atoms: Any, selections: TMapping[str, str] | Sequence[tuple[str, str]],
                    weighting: str = "com", complete: bool = False, attach_rest: bool = False,
                    source: str | None = None) -> Any:
    """Mapping with one bead per ``{bead name: MDAnalysis selection string}`` (see ``Mapping.from_selections``)."""
    atoms = getattr(atoms, "atoms", atoms)
    items = list(selections.items()) if hasattr(selections, "items") else list(selections)
    if not items:
        raise InputError("no bead selections given; expected {bead name: selection string}")
    info = group_info(atoms)
    n = atoms.n_atoms
    pos = {int(ix): k for k, ix in enumerate(atoms.indices)}
    owner = np.full(n, -1)
    beads, names = [], []
    for k, (name, sel) in enumerate(items):
        if not isinstance(sel, str):
            raise InputError(f"bead {name!r}: selection must be a string, got {type(sel).__name__}")
        try:
            ag = atoms.select_atoms(sel)
        except Exception as e:  # noqa: BLE001 - MDAnalysis raises SelectionError, ValueError, ...
            raise InputError(f"bead {name!r}: invalid selection {sel!r} ({e})") from None
        if ag.n_atoms == 0:
            raise InputError(f"bead {name!r}: selection {sel!r} matches no atoms of the group ({n} atoms)")
        idx = np.array([pos[int(i)] for i in ag.indices if int(i) in pos], dtype=int)
        clash = idx[owner[idx] >= 0]
        if clash.size:
            j = int(owner[clash[0]])
            raise InputError(f"bead {name!r}: selection {sel!r} overlaps bead {names[j]!r} at "
                             f"{describe_atom(atoms, clash[0])}; every atom may belong to one bead only")
        owner[idx] = k
        beads.append(idx)
        names.append(str(name))
    if attach_rest:
        owner = attach_to_nearest_bead(owner, info["atom_bonds"])
        beads = [np.flatnonzero(owner == k) for k in range(len(beads))]
    missing = np.flatnonzero(owner < 0)
    if (complete or attach_rest) and missing.size:
        what = ", ".join(describe_atom(atoms, i) for i in missing[:5])
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        why = " (not bonded to any bead)" if attach_rest else ""
        raise InputError(f"{missing.size} atoms are in no bead{why}: {what}{more}; extend a bead's selection "
                         "or pass attach_rest=True to attach them to the nearest bonded bead")
    return cls(beads=beads, names=names, weighting=weighting, source=source or "selections", **info)
