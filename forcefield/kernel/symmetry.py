"""Permutational symmetries of a molecule detected from its geometries (symmetric GDML style).

Each sampled frame is matched atom-to-atom onto a reference frame: rigid alignment, then a linear
assignment of atoms of equal element by squared distance, repeated until the assignment is stable.
A match that keeps the bond graph and fits well is a symmetry seen in the data (e.g. a methyl group
that turned by 120°). The matches are then closed into a group (all products), as the symmetrised
kernel needs. A permutation ``p`` acts on positions as ``R[:, p]``.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError
from ..geometry import covalent_bonds, kabsch


def _match(ref: np.ndarray, R: np.ndarray, z: np.ndarray, n_rounds: int = 4) -> tuple[np.ndarray, float]:
    """Atom assignment p with R[p] ≈ ref after alignment, and its RMSD (Å)."""
    from scipy.optimize import linear_sum_assignment

    n = len(z)
    p = np.arange(n)
    penalty = 1e6 * (z[:, None] != z[None, :])
    for _ in range(n_rounds):
        rot, t = kabsch(R[p], ref)
        X = R @ rot.T + t
        cost = ((ref[:, None, :] - X[None, :, :]) ** 2).sum(-1) + penalty
        _, new = linear_sum_assignment(cost)
        if np.array_equal(new, p):
            break
        p = new
    rot, t = kabsch(R[p], ref)
    rmsd = float(np.sqrt((((R[p] @ rot.T + t) - ref) ** 2).sum(-1).mean()))
    return p, rmsd


def close_group(perms: list[np.ndarray] | np.ndarray, max_size: int = 100) -> np.ndarray | None:
    """All products of the given permutations (with the identity first), or None if the group would
    exceed ``max_size`` elements."""
    perms = [np.asarray(p, dtype=int) for p in perms]
    n = len(perms[0])
    ident = tuple(range(n))
    group = {ident: None}
    frontier = [ident]
    gens = [tuple(p) for p in perms if tuple(p) != ident]
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                c = tuple(np.asarray(a)[list(g)])
                if c not in group:
                    group[c] = None
                    new.append(c)
                    if len(group) > max_size:
                        return None
        frontier = new
    out = sorted(group, key=lambda t: (t != ident, t))
    return np.array(out, dtype=int)


def detect_permutations(R: np.ndarray, z: np.ndarray, n_frames: int = 40, max_rmsd: float = 0.5,
                        max_size: int = 100, mirror: bool = True, complete_rotors: bool = True,
                        seed: int = 0) -> np.ndarray:
    """Permutational symmetries (P, N) seen in geometries R (M, N, 3) of a molecule with atoms z.

    Parameters
    ----------
    n_frames : frames sampled (evenly) and matched onto the first one.
    max_rmsd : a match counts only if the matched frame fits the reference within this RMSD (Å) and
        better than without permuting.
    max_size : give up (identity only, with a warning) if the closed group is larger.
    mirror : also match each frame's mirror image. The inverse-distance descriptor cannot tell a geometry
        from its mirror image, so such matches are symmetries in descriptor space too (sGDML matches
        distance matrices and finds them as well).
    complete_rotors : when a found permutation cycles the equivalent terminal atoms of a rotor (same
        element, all bonded only to the same atom, e.g. methyl hydrogens), add every permutation of them
        (S3 instead of C3 for a methyl group: the swaps are its local mirror images, which sGDML's
        distance-matrix matching also finds).

    Returns
    -------
    (P, N) int array; row 0 is the identity.
    """
    R = np.asarray(R, dtype=float)
    z = np.asarray(z, dtype=int)
    if R.ndim != 3 or R.shape[1:] != (len(z), 3):
        raise InputError(f"geometries must have shape (M, {len(z)}, 3), got {R.shape}")
    n = len(z)
    ref = R[0]
    bonds = covalent_bonds(ref, z)
    adj = np.zeros((n, n), dtype=bool)
    if len(bonds):
        adj[bonds[:, 0], bonds[:, 1]] = adj[bonds[:, 1], bonds[:, 0]] = True
    idx = np.unique(np.linspace(0, len(R) - 1, min(n_frames, len(R))).round().astype(int))
    found: dict[tuple, None] = {}
    flip = np.array([-1.0, 1.0, 1.0])
    for k in idx[1:] if len(idx) > 1 else idx:
        for X in ([R[k], R[k] * flip] if mirror else [R[k]]):
            p, rmsd = _match(ref, X, z)
            if np.array_equal(p, np.arange(n)) or rmsd > max_rmsd:
                continue
            if not np.array_equal(adj[np.ix_(p, p)], adj):
                continue
            found[tuple(p)] = None
    if not found:
        return np.arange(n)[None]
    gens = [np.arange(n)] + [np.array(p) for p in found]
    extra = []
    if complete_rotors:
        deg = adj.sum(1)
        moved = set()
        for p in gens:
            moved |= set(np.nonzero(p != np.arange(n))[0].tolist())
        for c in range(n):  # terminal atoms of one element on centre c, moved by a found permutation
            term = [a for a in np.nonzero(adj[c])[0] if deg[a] == 1 and a in moved]
            for el in set(z[term].tolist()) if term else []:
                grp = [a for a in term if z[a] == el]
                if len(grp) >= 2:
                    t = np.arange(n)
                    t[[grp[0], grp[1]]] = [grp[1], grp[0]]
                    extra.append(t)
    group = close_group(gens + extra, max_size=max_size)
    if group is None and extra:  # completed rotors make the group too large: keep what was seen
        group = close_group(gens, max_size=max_size)
    if group is None:
        warnings.warn(f"symmetry detection: the permutations found generate more than {max_size} "
                      "elements; using no symmetries", stacklevel=2)
        return np.arange(n)[None]
    return group


def check_permutations(perms: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Validate user permutations (P, N): each row a permutation of range(N) that maps atoms onto atoms of
    the same element; the identity is put first and the set closed into a group."""
    perms = np.atleast_2d(np.asarray(perms))
    n = len(z)
    if perms.ndim != 2 or perms.shape[1] != n:
        raise InputError(f"perms must have shape (P, {n}) for {n} atoms, got {perms.shape}")
    if not np.issubdtype(perms.dtype, np.integer):
        raise InputError(f"perms must be integers, got dtype {perms.dtype}")
    for k, p in enumerate(perms):
        if not np.array_equal(np.sort(p), np.arange(n)):
            raise InputError(f"perms row {k} is not a permutation of 0..{n - 1}")
        bad = np.nonzero(np.asarray(z)[p] != np.asarray(z))[0]
        if len(bad):
            raise InputError(f"perms row {k} maps atom {bad[0]} onto an atom of another element")
    group = close_group(list(perms), max_size=10 ** 6)
    return group
