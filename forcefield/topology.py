"""Bond-graph topology shared by every package: neighbours, angles, dihedrals, exclusions, components and
graph symmetries.

A topology is a bond list: an (n_bonds, 2) integer array of atom (or bead) indices. Functions that need the
number of particles take ``n_atoms`` (isolated particles have no bonds). Orders are deterministic:
angle triples (i, j, k) go by vertex j, then i < k; dihedral quadruples (i, j, k, l) follow the bond list
(j, k) and then sorted i and l; pairs are (i < j) in lexicographic order.

A permutation ``p`` (an automorphism) maps atom i to atom ``p[i]``; it acts on positions as ``R[..., p, :]``.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Hashable, Sequence

import numpy as np

from .errors import InputError


def as_bonds(bonds: np.ndarray, n_atoms: int | None = None) -> np.ndarray:
    """Bonds as an (n_bonds, 2) int array; checks indices (>= 0, < ``n_atoms``) and self-bonds."""
    b = np.asarray(bonds, dtype=int).reshape(-1, 2) if np.size(bonds) else np.zeros((0, 2), dtype=int)
    if b.size and b.min() < 0:
        raise InputError(f"bond {int(np.argmax((b < 0).any(1)))} has a negative atom index")
    if n_atoms is not None and b.size and b.max() >= n_atoms:
        k = int(np.argmax((b >= n_atoms).any(1)))
        raise InputError(f"bond {k} ({b[k, 0]}, {b[k, 1]}) names an atom beyond the {n_atoms} atoms")
    if (b[:, 0] == b[:, 1]).any():
        k = int(np.argmax(b[:, 0] == b[:, 1]))
        raise InputError(f"bond {k} joins atom {b[k, 0]} to itself")
    return b


def _n(bonds: np.ndarray, n_atoms: int | None) -> int:
    return int(n_atoms) if n_atoms is not None else (int(bonds.max()) + 1 if bonds.size else 0)


def neighbours(bonds: np.ndarray, n_atoms: int | None = None) -> list[list[int]]:
    """Sorted adjacency lists: ``nb[i]`` are the atoms bonded to atom i (length ``n_atoms``)."""
    b = as_bonds(bonds, n_atoms)
    nb: list[set[int]] = [set() for _ in range(_n(b, n_atoms))]
    for i, j in b.tolist():
        nb[i].add(j)
        nb[j].add(i)
    return [sorted(s) for s in nb]


def adjacency_matrix(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """Symmetric (n_atoms, n_atoms) bool matrix of the bond graph, no self bonds."""
    b = as_bonds(bonds, n_atoms)
    A = np.zeros((n_atoms, n_atoms), dtype=bool)
    A[b[:, 0], b[:, 1]] = A[b[:, 1], b[:, 0]] = True
    return A


def bonds_from_adjacency(A: np.ndarray) -> np.ndarray:
    """(n_bonds, 2) pairs i < j of a symmetric adjacency matrix, lexicographic order."""
    return np.argwhere(np.triu(np.asarray(A, dtype=bool), 1)).astype(int).reshape(-1, 2)


def angle_triples(bonds: np.ndarray) -> np.ndarray:
    """(n_angles, 3) triples (i, j, k) of bonded paths i-j-k, j the vertex, i < k."""
    nb = neighbours(bonds)
    out = [(i, j, k) for j in range(len(nb)) for i in nb[j] for k in nb[j] if i < k]
    return np.array(out, dtype=int).reshape(-1, 3)


def dihedral_quads(bonds: np.ndarray, one_per_bond: bool = False) -> np.ndarray:
    """(n_dihedrals, 4) quadruples i-j-k-l along bonded paths, one per path (central bond (j, k) as listed).

    ``one_per_bond`` keeps only the first quadruple around each central bond: the torsions around one bond
    differ by nearly constant offsets, so priors on all of them would count one torsion several times.
    """
    b = as_bonds(bonds)
    nb = neighbours(b)
    out = []
    for j, k in b.tolist():
        quads = [(i, j, k, l) for i in nb[j] if i != k for l in nb[k] if l != j and l != i]
        out += quads[:1] if one_per_bond else quads
    return np.array(out, dtype=int).reshape(-1, 4)


def graph_distances(bonds: np.ndarray, n_atoms: int, max_d: int | None = None) -> np.ndarray:
    """(n, n) number of bonds on the shortest path between atoms (breadth-first search), capped at ``max_d``.

    Pairs ``max_d`` or more bonds apart, or in different components, get ``max_d`` (``n_atoms`` when
    ``max_d`` is None, a value no path reaches).
    """
    far = int(n_atoms) if max_d is None else int(max_d)
    nb = neighbours(bonds, n_atoms)
    D = np.full((n_atoms, n_atoms), far, dtype=int)
    for s in range(n_atoms):
        D[s, s] = 0
        q = deque([s])
        while q:
            a = q.popleft()
            if D[s, a] + 1 >= far:
                continue
            for c in nb[a]:
                if D[s, c] == far and c != s:
                    D[s, c] = D[s, a] + 1
                    q.append(c)
    return D


def exclusions(bonds: np.ndarray, n_atoms: int, include_14: bool = False) -> np.ndarray:
    """(n_pairs, 2) pairs i < j excluded from non-bonded terms: 1-2 and 1-3 (and 1-4 with ``include_14``)."""
    D = graph_distances(bonds, n_atoms, 4)
    i, j = np.triu_indices(n_atoms, 1)
    keep = D[i, j] <= (3 if include_14 else 2)
    return np.stack([i[keep], j[keep]], axis=1).reshape(-1, 2)


def nonbonded_pairs(bonds: np.ndarray, n_atoms: int, exclude_14: bool = False) -> np.ndarray:
    """(n_pairs, 2) pairs i < j not excluded by :func:`exclusions` (1-2, 1-3, optionally 1-4)."""
    D = graph_distances(bonds, n_atoms, 4)
    i, j = np.triu_indices(n_atoms, 1)
    keep = D[i, j] > (3 if exclude_14 else 2)
    return np.stack([i[keep], j[keep]], axis=1).reshape(-1, 2)


def connected_components(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """Component label (n_atoms,) of every atom: 0, 1, ... in order of each component's lowest atom."""
    nb = neighbours(bonds, n_atoms)
    lab = np.full(n_atoms, -1, dtype=int)
    c = 0
    for s in range(n_atoms):
        if lab[s] >= 0:
            continue
        lab[s] = c
        q = deque([s])
        while q:
            a = q.popleft()
            for b in nb[a]:
                if lab[b] < 0:
                    lab[b] = c
                    q.append(b)
        c += 1
    return lab


def _labels(labels: Sequence[Hashable] | np.ndarray) -> list:
    return list(np.asarray(labels).tolist()) if isinstance(labels, np.ndarray) else list(labels)


def _vf2(nodes: list[int], node_labels: dict, edges: list, limit: int) -> tuple[list[dict], bool]:
    """Up to ``limit`` label-keeping automorphisms (dicts) of a graph, identity first; and whether capped."""
    import networkx as nx
    from networkx.algorithms.isomorphism import GraphMatcher

    G = nx.Graph()
    G.add_nodes_from((i, {"label": node_labels[i]}) for i in nodes)
    G.add_edges_from(edges)
    gm = GraphMatcher(G, G, node_match=lambda a, c: a["label"] == c["label"])
    out = [{i: i for i in nodes}]
    for m in gm.isomorphisms_iter():
        if all(m[i] == i for i in nodes):
            continue
        if len(out) >= limit:
            return out, True
        out.append(m)
    return out, False


def terminal_groups(bonds: np.ndarray, labels: Sequence[Hashable] | np.ndarray) -> list[np.ndarray]:
    """Sets of two or more interchangeable terminal atoms: same label, one bond each, to the same atom
    (methyl and methylene hydrogens, carboxylate oxygens). Every permutation within a set is a graph
    automorphism, and every automorphism maps sets onto sets."""
    labels = _labels(labels)
    nb = neighbours(bonds, len(labels))
    sets: dict[tuple[int, Hashable], list[int]] = {}
    for a, nbs in enumerate(nb):
        if len(nbs) == 1 and len(nb[nbs[0]]) > 1:
            sets.setdefault((nbs[0], labels[a]), []).append(a)
    return [np.array(g, dtype=int) for _, g in sorted(sets.items(), key=lambda kv: kv[1][0]) if len(g) > 1]


def skeleton_automorphisms(bonds: np.ndarray, labels: Sequence[Hashable] | np.ndarray, max_perms: int = 1000,
                           warn: bool = True) -> np.ndarray:
    """Automorphisms of the graph with each :func:`terminal_groups` set folded into its centre, lifted to all
    atoms (sets mapped onto sets in listed order); (n_perm, n_atoms), identity first.

    Every automorphism is one of these followed by permutations within the terminal sets, so the group has
    ``len(skeleton) * prod(len(set)!)`` elements (:func:`automorphism_count`) without listing them.
    """
    labels = _labels(labels)
    n = len(labels)
    b = as_bonds(bonds, n)
    groups = terminal_groups(b, labels)
    folded = {int(a) for g in groups for a in g}
    deco: dict[int, list] = {}
    by_centre: dict[tuple[int, Hashable], np.ndarray] = {}
    for g in groups:
        c = int(neighbours(b, n)[g[0]][0])
        deco.setdefault(c, []).append((str(labels[g[0]]), len(g)))
        by_centre[(c, labels[g[0]])] = g
    nodes = [a for a in range(n) if a not in folded]
    node_labels = {a: (labels[a], tuple(sorted(deco.get(a, [])))) for a in nodes}
    edges = [(i, j) for i, j in b.tolist() if i not in folded and j not in folded]
    maps, capped = _vf2(nodes, node_labels, edges, max_perms)
    if capped and warn:
        warnings.warn(f"more than {max_perms} skeleton automorphisms; keeping the first {max_perms}", stacklevel=2)
    out = np.tile(np.arange(n), (len(maps), 1))
    for r, m in enumerate(maps):
        for u, v in m.items():
            out[r, u] = v
        for (c, lab), g in by_centre.items():
            out[r, g] = by_centre[(m[c], lab)]
    return out


def expand_terminal(perms: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Every ``p`` of ``perms`` composed with every permutation within the terminal ``groups``:
    ``len(perms) * prod(len(g)!)`` rows (from :func:`skeleton_automorphisms`, the whole automorphism group)."""
    from itertools import permutations

    out = np.asarray(perms, dtype=int)
    for g in groups:
        local = np.array([g[list(q)] for q in permutations(range(len(g)))])
        rep = np.repeat(out, len(local), axis=0)
        rep[:, g] = out[:, local].reshape(-1, len(g))
        out = rep
    return out


def automorphism_count(bonds: np.ndarray, labels: Sequence[Hashable] | np.ndarray, max_skeleton: int = 1000) -> int:
    """Order of the automorphism group (skeleton automorphisms x permutations within terminal sets)."""
    from math import factorial, prod

    sk = skeleton_automorphisms(bonds, labels, max_skeleton, warn=False)
    return len(sk) * prod(factorial(len(g)) for g in terminal_groups(bonds, labels))


def automorphisms(bonds: np.ndarray, labels: Sequence[Hashable] | np.ndarray, max_perms: int = 1000,
                  warn: bool = True) -> np.ndarray:
    """Graph automorphisms of a labelled bond graph (permutations keeping bonds and labels).

    Parameters
    ----------
    bonds : (n_bonds, 2) bond list.
    labels : one label per atom (atomic numbers, atom types); only equal labels may be exchanged.
    max_perms : stop after this many (a warning says so; the result is then not a whole group).

    Returns
    -------
    (n_perm, n_atoms) int array, the identity first; ``p[i]`` is the atom that atom i is mapped to
    (e.g. the six permutations of a methyl group's hydrogens, the two oxygens of a carboxylate).
    """
    labels = _labels(labels)
    n = len(labels)
    b = as_bonds(bonds, n)
    if max_perms < 1:
        raise InputError(f"max_perms must be >= 1, got {max_perms}")
    maps, capped = _vf2(list(range(n)), dict(enumerate(labels)), b.tolist(), max_perms)
    if capped and warn:
        warnings.warn(f"more than {max_perms} graph automorphisms; keeping the first {max_perms} "
                      "(symmetry-aware figures are then upper bounds)", stacklevel=2)
    return np.array([[m[i] for i in range(n)] for m in maps], dtype=int).reshape(-1, n)


def restrict_perms(perms: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Permutations of a subset: each ``p`` restricted to ``atoms`` and re-indexed within it (duplicates removed).

    Every permutation must map the subset onto itself (true for heavy atoms under element-keeping
    automorphisms).
    """
    perms = np.asarray(perms, dtype=int)
    atoms = np.asarray(atoms, dtype=int)
    pos = np.full(perms.shape[1], -1, dtype=int)
    pos[atoms] = np.arange(len(atoms))
    sub = pos[perms[:, atoms]]
    if (sub < 0).any():
        raise InputError("a permutation maps an atom of the subset outside it")
    _, first = np.unique(sub, axis=0, return_index=True)
    return sub[np.sort(first)]
