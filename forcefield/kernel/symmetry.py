"""Permutational symmetries of a molecule detected from its geometries (symmetric GDML style).

Candidates come from the bond graph, evidence from the data, and decisions from fractions of frames:

1. The bond graph is a majority vote over frames spread across the set, so an outlier frame (a stretched
   bond, a clash) can neither add nor remove a bond.
2. Candidate symmetries are automorphisms of the element-coloured graph, in blocks: each set of two or
   more terminal atoms of one element on one centre (methyl hydrogens, carboxylate oxygens, ...) with
   their permutations, and the automorphisms of the skeleton left when those sets are folded into their
   centres (ring flips, equivalent branches), enumerated by VF2 (networkx).
3. Per block, every frame gets the block element that maps it closest to a reference frame in
   inverse-distance space (the kernel's descriptor space). The reference is the medoid of a subsample, so
   it is never an outlier. Inverse distances cannot tell mirror images apart, so a local mirror image
   counts where the data realise it (the hydrogen swaps of aspirin's methyl group, as sGDML's matching of
   distance matrices finds them), and not where the surroundings are chiral (a methyl on an alanine Cα).
4. An element is *seen* when it is the best match of at least ``min_fraction`` of the frames (and of at
   least ``min_count`` frames). A fraction, unlike "seen at least once", does not grow with the number of
   frames, so frames drawn from one trajectory give the same group at 200 or 2,000 training points, and a
   few odd frames cannot add a symmetry.
5. The seen elements of a block are closed into a group (a rotor whose rotation is seen is completed to
   all permutations of its atoms: the swaps are its local mirror images); the molecule's group is the
   product of the blocks' groups. If it would exceed ``max_size``, blocks are taken by group size, largest
   first, all blocks of one size together; a size class that does not fit is left out whole, with a
   warning (choosing among similar blocks by activity would make the group depend on the frames drawn:
   on DHA two of five CH2 blocks swap places in the activity order between 100 and 500 frames).

A permutation ``p`` acts on positions as ``R[:, p]``.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..geometry import covalent_bonds


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


@dataclass
class SymmetryBlock:
    """One block of candidate symmetries and what the data say about it.

    Attributes
    ----------
    kind : ``"rotor"`` (equivalent terminal atoms on one centre) or ``"skeleton"``.
    atoms : the atoms the block's candidates move.
    centre : the rotor's centre atom (-1 for the skeleton block).
    candidates : (c, N) the candidate permutations (row 0 the identity).
    fractions : (c,) share of frames whose best match is each candidate.
    group : (g, N) the block's group kept from the seen candidates (identity only if none was seen).
    seen_group : (s, N) the group of the seen candidates alone (a rotor not completed: its rotations), the
        fallback when completed groups do not fit into ``max_size``.
    """

    kind: str
    atoms: np.ndarray
    centre: int
    candidates: np.ndarray
    fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group: np.ndarray | None = None
    seen_group: np.ndarray | None = None

    @property
    def activity(self) -> float:
        """Share of frames whose best match is not the identity."""
        return float(1.0 - self.fractions[0]) if len(self.fractions) else 0.0


@dataclass
class SymmetryReport:
    """Result of :func:`detect_symmetries`: the group, every candidate block, those kept in the group and
    those left out (by ``max_size``), the reference frame."""

    perms: np.ndarray
    blocks: list[SymmetryBlock]
    kept: list[SymmetryBlock]
    dropped: list[SymmetryBlock]
    reference: int
    bonds: np.ndarray
    n_frames: int

    def summary(self) -> str:
        lines = [f"{len(self.perms)} permutations from {self.n_frames} frames (reference frame {self.reference})"]
        for b in self.blocks:
            tag = ("left out" if any(b is d for d in self.dropped) else
                   f"kept, group {len(b.group)}" if any(b is k for k in self.kept) else "not seen")
            lines.append(f"  {b.kind} {b.atoms.tolist()}: activity {b.activity:.3f}, {tag}")
        return "\n".join(lines)


def _spread(m: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(m)."""
    return np.unique(np.linspace(0, m - 1, min(k, m)).round().astype(int))


def consensus_bonds(R: np.ndarray, z: np.ndarray, n_frames: int = 31, scale: float = 1.3) -> np.ndarray:
    """Bonds (i < j) present in more than half of up to ``n_frames`` frames spread over R (M, N, 3) Å."""
    idx = _spread(len(R), n_frames)
    n = len(z)
    count = np.zeros((n, n), dtype=int)
    for k in idx:
        b = covalent_bonds(R[k], z, scale)
        count[b[:, 0], b[:, 1]] += 1
    i, j = np.nonzero(count * 2 > len(idx))
    return np.stack([i, j], axis=1)


def _inv_dist(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Inverse distances (F, a, b) between atoms X (F, a, 3) and Y (F, b, 3) (0 where they coincide)."""
    d = np.linalg.norm(X[:, :, None] - Y[:, None], axis=-1)
    with np.errstate(divide="ignore"):
        return np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)


def _medoid(R: np.ndarray, n_sub: int = 64) -> int:
    """Index of the frame of R with the smallest median descriptor distance to a spread subsample."""
    idx = _spread(len(R), n_sub)
    D = _inv_dist(R[idx], R[idx]).reshape(len(idx), -1)
    sq = (D * D).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2.0 * D @ D.T, 0.0))
    return int(idx[np.argmin(np.median(dist, axis=1))])


def _terminal_sets(adj: np.ndarray, z: np.ndarray) -> list[tuple[int, list[int]]]:
    """(centre, atoms) for every set of >= 2 degree-1 atoms of one element on one centre."""
    deg = adj.sum(1)
    out = []
    for c in range(len(z)):
        term = [int(a) for a in np.nonzero(adj[c])[0] if deg[a] == 1 and deg[c] > 1]
        for el in sorted(set(z[term].tolist())):
            grp = sorted(a for a in term if z[a] == el)
            if len(grp) >= 2:
                out.append((c, grp))
    return out


def _rotor_candidates(n: int, atoms: list[int], centre: int, adj: np.ndarray, ref: np.ndarray,
                      mirror: bool) -> np.ndarray:
    """Candidate permutations of a rotor: all permutations of its atoms (``mirror``), else its rotations
    (cyclic shifts in the order of the atoms around the centre's axis in the reference frame)."""
    k = len(atoms)
    if mirror and k <= 5:
        orders = list(itertools.permutations(range(k)))
    else:
        others = [a for a in np.nonzero(adj[centre])[0] if a not in atoms]
        anchor = ref[others].mean(0) if others else np.delete(ref, atoms + [centre], 0).mean(0)
        axis = ref[centre] - anchor
        axis /= np.linalg.norm(axis) or 1.0
        v = ref[atoms] - ref[centre]
        v -= (v @ axis)[:, None] * axis
        e1 = v[0] / (np.linalg.norm(v[0]) or 1.0)
        ang = np.arctan2(v @ np.cross(axis, e1), v @ e1)
        ring = np.argsort(ang)
        orders = [tuple(np.roll(ring, s)[np.argsort(ring)]) for s in range(k)]
    out = np.tile(np.arange(n), (len(orders), 1))
    at = np.asarray(atoms)
    for r, o in enumerate(orders):
        out[r, at] = at[list(o)]
    ident = np.all(out == np.arange(n), axis=1)
    return np.concatenate([out[ident][:1], out[~ident]])


def _skeleton_candidates(n: int, adj: np.ndarray, z: np.ndarray, sets: list[tuple[int, list[int]]],
                         max_candidates: int) -> np.ndarray:
    """Automorphisms of the skeleton (terminal sets folded into their centres), lifted to all atoms."""
    import networkx as nx
    from networkx.algorithms.isomorphism import GraphMatcher

    folded = {a for _, g in sets for a in g}
    deco: dict[int, list[int]] = {}
    for c, g in sets:
        deco.setdefault(c, []).extend(int(z[a]) for a in g)
    G = nx.Graph()
    for a in range(n):
        if a not in folded:
            G.add_node(a, label=(int(z[a]), tuple(sorted(deco.get(a, [])))))
    i, j = np.nonzero(np.triu(adj, 1))
    G.add_edges_from((int(a), int(b)) for a, b in zip(i, j) if a not in folded and b not in folded)
    gm = GraphMatcher(G, G, node_match=lambda u, v: u["label"] == v["label"])
    by_centre: dict[tuple[int, int], list[int]] = {(c, int(z[g[0]])): g for c, g in sets}
    out = []
    for m in itertools.islice(gm.isomorphisms_iter(), max_candidates):
        p = np.arange(n)
        for u, v in m.items():
            p[u] = v
        for (c, el), g in by_centre.items():
            p[g] = by_centre[(m[c], el)]
        out.append(p)
    out = np.array(out) if out else np.arange(n)[None]
    ident = np.all(out == np.arange(n), axis=1)
    return np.concatenate([np.arange(n)[None], out[~ident]])


def _best_match(R: np.ndarray, ref: np.ndarray, cand: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index (F,) of the candidate p that brings each frame R[f][p] closest to ref, in inverse distances
    between the atoms ``rows`` and ``cols``."""
    Dref = _inv_dist(ref[None, rows], ref[None, cols])[0]
    cost = np.empty((len(R), len(cand)))
    for c, p in enumerate(cand):
        D = _inv_dist(R[:, p[rows]], R[:, p[cols]])
        cost[:, c] = ((D - Dref) ** 2).sum((1, 2))
    return np.argmin(cost, axis=1)


def _parity(images: np.ndarray, atoms: np.ndarray) -> int:
    """Parity (0 even, 1 odd) of the permutation of ``atoms`` that sends atoms[k] to images[k]."""
    pos = {int(a): k for k, a in enumerate(atoms)}
    perm = [pos[int(i)] for i in images]
    seen, par = set(), 0
    for k in range(len(perm)):
        if k in seen:
            continue
        j, length = k, 0
        while j not in seen:
            seen.add(j)
            j, length = perm[j], length + 1
        par ^= (length - 1) & 1
    return par


def _generators(group: np.ndarray) -> list[np.ndarray]:
    """A small generating set of a group (P, N) (identity first): elements not yet generated, greedily."""
    gens: list[np.ndarray] = []
    have = {tuple(group[0])}
    for p in group[1:]:
        if tuple(p) not in have:
            gens.append(p)
            have = {tuple(q) for q in close_group([group[0]] + gens, max_size=10 ** 6)}
    return gens


def detect_symmetries(R: np.ndarray, z: np.ndarray, max_size: int = 100, mirror: bool = True,
                      complete_rotors: bool = True, min_fraction: float = 0.05, min_count: int = 2,
                      max_frames: int = 1000, max_skeleton: int = 1000, bonds: np.ndarray | None = None
                      ) -> SymmetryReport:
    """The permutational symmetries seen in geometries R (M, N, 3) Å of a molecule with atoms z (N,).

    See the module docstring for the method. Parameters: ``max_size`` largest group kept; ``mirror``
    allows local mirror images among the rotor candidates (else only rotations); ``complete_rotors``
    completes a rotor whose rotation is seen to all permutations of its atoms; ``min_fraction``,
    ``min_count`` the evidence needed; ``max_frames`` frames used (spread evenly; the decisions rest on
    fractions, so a subsample gives the same answer); ``max_skeleton`` skeleton automorphisms enumerated;
    ``bonds`` (B, 2) to use instead of the majority-vote bond graph.
    """
    R = np.asarray(R, dtype=float)
    z = np.asarray(z, dtype=int)
    if R.ndim != 3 or R.shape[1:] != (len(z), 3):
        raise InputError(f"geometries must have shape (M, {len(z)}, 3), got {R.shape}")
    if not np.isfinite(R).all():
        raise InputError(f"geometries: frame {int(np.nonzero(~np.isfinite(R).all(axis=(1, 2)))[0][0])} "
                         "contains NaN or infinite values")
    n = len(z)
    ident = np.arange(n)[None]
    bonds = consensus_bonds(R, z) if bonds is None else np.asarray(bonds, dtype=int).reshape(-1, 2)
    sub = R[_spread(len(R), max_frames)]
    ref_i = _medoid(sub)
    ref = sub[ref_i]
    if n < 3 or len(sub) < 2:
        return SymmetryReport(ident, [], [], [], ref_i, bonds, len(sub))
    adj = np.zeros((n, n), dtype=bool)
    adj[bonds[:, 0], bonds[:, 1]] = adj[bonds[:, 1], bonds[:, 0]] = True
    sets = _terminal_sets(adj, z)
    folded = np.array(sorted({a for _, g in sets for a in g}), dtype=int)
    skel = np.setdiff1d(np.arange(n), folded)
    blocks = [SymmetryBlock("rotor", np.array(g), c, _rotor_candidates(n, g, c, adj, ref, mirror)) for c, g in sets]
    sk = _skeleton_candidates(n, adj, z, sets, max_skeleton) if len(skel) > 1 else ident
    if len(sk) > 1:
        moved = np.nonzero((sk != np.arange(n)).any(0))[0]
        blocks.append(SymmetryBlock("skeleton", moved, -1, sk))
    need = max(int(min_count), int(math.ceil(min_fraction * len(sub))))
    for b in blocks:
        if b.kind == "rotor":  # the rotor's atoms against the skeleton (other rotors' atoms move independently)
            cols = skel if len(skel) else np.setdiff1d(np.arange(n), b.atoms)
            best = _best_match(sub, ref, b.candidates, b.atoms, cols)
        else:  # the moved skeleton atoms against the whole skeleton; memory ~ frames x skeleton²
            fr = _spread(len(sub), max(2, int(2e7 // max(1, len(skel) * len(b.atoms)))))
            best = _best_match(sub[fr], ref, b.candidates, np.intersect1d(b.atoms, skel), skel)
        counts = np.bincount(best, minlength=len(b.candidates))
        b.fractions = counts / len(best)
        seen = [b.candidates[c] for c in np.nonzero(counts >= need)[0] if c > 0]
        # fallback when completed groups do not fit: the proper rotations among the seen elements (even
        # permutations of a rotor's atoms; a local mirror image is odd)
        rot = [p for p in seen if b.kind != "rotor" or _parity(p[b.atoms], b.atoms) == 0]
        b.seen_group = close_group([np.arange(n)] + rot, max_size=10 ** 6) if rot else ident
        if not seen:
            b.group = ident
        elif b.kind == "rotor" and complete_rotors and len(b.atoms) <= 5:
            full = np.tile(np.arange(n), (math.factorial(len(b.atoms)), 1))
            for r, o in enumerate(itertools.permutations(b.atoms.tolist())):
                full[r, b.atoms] = o
            b.group = close_group(list(full), max_size=10 ** 6)
        else:
            b.group = close_group([np.arange(n)] + seen, max_size=10 ** 6)
    active = sorted((b for b in blocks if len(b.group) > 1), key=lambda b: (-len(b.group), -b.activity))
    kept: list[SymmetryBlock] = []
    dropped: list[SymmetryBlock] = []
    group, gens = ident, [np.arange(n)]
    for size in sorted({len(b.group) for b in active}, reverse=True):
        # blocks of one group size are kept or left out together: which of several similar blocks would
        # fit must not hinge on their activities, which vary with the frames drawn
        tier = [b for b in active if len(b.group) == size]
        new = [p for b in tier for p in _generators(b.group)]
        g = close_group(gens + new, max_size=max_size)
        if g is None and any(len(b.seen_group) < len(b.group) for b in tier):
            # completed rotors too many together (alanine dipeptide: three S3 methyls, 216): keep the tier's
            # seen proper rotations instead (C3 each, 27)
            new = [p for b in tier for p in _generators(b.seen_group)]
            g = close_group(gens + new, max_size=max_size)
            if g is not None:
                for b in tier:
                    b.group = b.seen_group
        if g is None:
            dropped += tier
        else:
            kept += tier
            group, gens = g, gens + new
    if dropped:
        warnings.warn(f"symmetry detection: {len(dropped)} of {len(active)} symmetric blocks left out to keep "
                      f"the group within {max_size} permutations (kept {len(group)})", stacklevel=3)
    return SymmetryReport(group, blocks, kept, dropped, ref_i, bonds, len(sub))


def detect_permutations(R: np.ndarray, z: np.ndarray, max_size: int = 100, mirror: bool = True,
                        complete_rotors: bool = True, min_fraction: float = 0.05, min_count: int = 2,
                        max_frames: int = 1000) -> np.ndarray:
    """Permutational symmetries (P, N) seen in geometries R (M, N, 3) of a molecule with atoms z.

    The group of :func:`detect_symmetries` (see there and the module docstring for the parameters):
    it does not depend on how many frames of a trajectory are given, and outlier frames do not change it.

    Returns
    -------
    (P, N) int array; row 0 is the identity.
    """
    return detect_symmetries(R, z, max_size=max_size, mirror=mirror, complete_rotors=complete_rotors,
                             min_fraction=min_fraction, min_count=min_count, max_frames=max_frames).perms


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
