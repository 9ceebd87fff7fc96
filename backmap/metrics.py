"""Metrics for backmapped (generated) all-atom structures against references.

Definitions (all distances in Å):

* **RMSD** (``rmsd_all``, ``rmsd_heavy``): root-mean-square deviation after optimal superposition
  (Kabsch, no mass weights) of each sample onto the reference frame it was generated from, averaged over
  samples; heavy = atoms other than hydrogen. (CGVAE's script compares without alignment.) It is
  **symmetry-aware**: the minimum over the graph automorphisms of the reference bond graph with element
  labels (:func:`forcefield.topology.automorphisms`), so a methyl group turned by 120° (its hydrogens
  exchanged) or a swapped pair of equivalent oxygens costs nothing. ``rmsd_all_plain`` and
  ``rmsd_heavy_plain`` keep the atom order as given; ``n_automorphisms`` is the number of permutations used.
* **Bond graph**: atoms i, j are bonded when ``d_ij < 1.3 (r_i + r_j)`` with covalent radii (as CGVAE,
  :func:`forcefield.geometry.covalent_bonds`). ``valid_ratio``: share of samples whose whole graph equals the
  graph of its reference frame. ``graph_edit_ratio``: edges present in exactly one of the two graphs divided
  by the edges of the reference graph, averaged over samples (``_heavy``: the same on heavy atoms only).
* **Clash**: a pair of heavy atoms three or more bonds apart in the reference topology graph (bonds of the
  first reference frame) closer than ``clash_distance`` (default 2.0 Å, the hinge distance of GenZProt; no
  such contact occurs in alanine dipeptide MD at 300 K, the closest are ~2.6 Å). ``clash_rate``: share of
  samples with at least one clash; ``clash_pairs``: mean number of clashing pairs per sample.
* **Diversity**: per CG frame, ``1 - mean(sample-sample RMSD) / mean(sample-reference RMSD)`` (FlowBack's
  definition with aligned all-atom RMSD), averaged over frames; needs two or more samples per frame
  (NaN otherwise; frames whose samples all equal the reference are left out).
  About 0 when the reference is exchangeable with the samples (a calibrated sampler), 1 for collapsed samples,
  negative when samples scatter more widely than their distance to the reference. ``sample_spread`` is the
  mean sample-sample RMSD itself.
* **COV / MAT** (ConfVAE, recall form): for a reference set and a generated set, each reference
  conformer's smallest heavy-atom aligned RMSD to any generated one; COV = share below ``threshold``,
  MAT = their mean.
* **Energy**: amber14 (OpenMM, vacuum) potential energies in kcal/mol of the generated and reference
  structures, when a topology PDB is given.

Generated structures are ordered frame-major: sample s of reference frame f is row ``f * n_samples + s``.

A figure over an empty set (no frames or samples: an error; no reference bonds for the graph-edit ratio,
no heavy-atom pair three bonds apart for clashes, one sample per frame for diversity: NaN) is never
reported as 0; :func:`compute_metrics` names the reason of each NaN under ``nan_reasons``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from forcefield.elements import COVALENT_RADII
from forcefield.errors import InputError
from forcefield.geometry import kabsch_rmsd
from forcefield.topology import (automorphism_count, bonds_from_adjacency, expand_terminal, graph_distances,
                                 restrict_perms, skeleton_automorphisms, terminal_groups)

__all__ = ["adjacency", "as_frames", "bond_graph_scores", "clash_counts", "compute_metrics", "cov_mat",
           "diversity", "energies", "kabsch_rmsd", "sample_spread", "symmetry_rmsd"]


def symmetry_rmsd(gen: np.ndarray, ref: np.ndarray, perms: np.ndarray | None = None,
                  atoms: np.ndarray | None = None, groups: list[np.ndarray] | None = None,
                  n_iter: int = 20) -> np.ndarray:
    """Symmetry-aware aligned RMSD (Å): ``min_p kabsch_rmsd(gen[..., p, :], ref)`` over permutations p.

    Parameters
    ----------
    gen, ref : (..., N, 3) broadcastable structures.
    perms : (P, N) permutations of equivalent atoms (graph automorphisms,
        :func:`forcefield.topology.automorphisms`); None gives the plain aligned RMSD.
    atoms : restrict to these atoms (e.g. heavy atoms); every permutation must map them onto themselves.
    groups : terminal sets (:func:`forcefield.topology.terminal_groups`) whose atoms may also be exchanged,
        for when the whole group is too large to list (then ``perms`` are the skeleton automorphisms).
        For each p, alignment and the best assignment within every set alternate until the assignment stops
        changing (each step lowers the RMSD): exact for structures near the reference, an upper bound
        otherwise.
    """
    gen = np.asarray(gen, dtype=float)
    ref = np.asarray(ref, dtype=float)
    n = gen.shape[-2]
    if perms is None:
        perms = np.arange(n)[None]
    perms = np.asarray(perms, dtype=int).reshape(-1, n)
    if not (np.sort(perms, axis=1) == np.arange(n)).all():
        raise InputError(f"perms must be permutations of the {n} atoms")
    if atoms is not None:
        atoms = np.asarray(atoms, dtype=int)
        perms = restrict_perms(perms, atoms)
        if groups:
            pos = np.full(n, -1)
            pos[atoms] = np.arange(len(atoms))
            inside = [pos[g] for g in groups if (pos[g] >= 0).any()]
            if any((g < 0).any() for g in inside):
                raise InputError("a terminal group lies partly outside the selected atoms")
            groups = inside
        gen, ref = gen[..., atoms, :], ref[..., atoms, :]
    if groups:
        gen, ref = np.broadcast_arrays(gen, ref)
        shape = gen.shape[:-2]
        G, Q = gen.reshape(-1, *gen.shape[-2:]), ref.reshape(-1, *ref.shape[-2:])
        best = np.min([_assign_groups(G[:, p], Q, groups, n_iter) for p in perms], axis=0)
        return best.reshape(shape)
    best = kabsch_rmsd(gen, ref)
    ident = np.arange(gen.shape[-2])
    for p in perms:
        if not np.array_equal(p, ident):
            best = np.minimum(best, kabsch_rmsd(gen[..., p, :], ref))
    return best


def _assign_groups(X: np.ndarray, Q: np.ndarray, groups: list[np.ndarray], n_iter: int) -> np.ndarray:
    """Aligned RMSD (B,) of X (B, N, 3) onto Q after alternating alignment / best assignment in each group."""
    from itertools import permutations

    B, N = X.shape[:2]
    cur = np.tile(np.arange(N), (B, 1))
    local = {k: np.array(list(permutations(range(k)))) for k in {len(g) for g in groups}}
    rows = np.arange(B)[:, None]
    for _ in range(n_iter):
        Xc = X[rows, cur]
        pc, qc = Xc.mean(1, keepdims=True), Q.mean(1, keepdims=True)
        U, _, Vt = np.linalg.svd(np.einsum("kni,knj->kij", Xc - pc, Q - qc))
        U[:, :, -1] *= np.sign(np.linalg.det(U) * np.linalg.det(Vt))[:, None]
        Y = np.einsum("kni,kij->knj", X - pc, U @ Vt) + qc  # every atom of X, aligned as the current order
        new = cur.copy()
        for g in groups:
            cand = g[local[len(g)]]                                     # (m, k) atoms of X to put at g
            cost = ((Y[:, cand] - Q[:, None, g]) ** 2).sum((-1, -2))    # (B, m)
            new[:, g] = cand[np.argmin(cost, axis=1)]
        if np.array_equal(new, cur):
            break
        cur = new
    return kabsch_rmsd(X[rows, cur], Q)


def adjacency(R: np.ndarray, z: np.ndarray, scale: float = 1.3) -> np.ndarray:
    """Bond graphs (..., N, N) bool from covalent radii (``d < scale (r_i + r_j)``), no self bonds."""
    R = np.asarray(R, dtype=float)
    rad = COVALENT_RADII[np.asarray(z, dtype=int)]
    d = np.linalg.norm(R[..., :, None, :] - R[..., None, :, :], axis=-1)
    A = d < scale * (rad[:, None] + rad[None, :])
    n = len(rad)
    A[..., np.arange(n), np.arange(n)] = False
    return A


def bond_graph_scores(gen: np.ndarray, ref: np.ndarray, z: np.ndarray, atoms: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (graph equals reference, graph-edit ratio). gen (F, S, N, 3), ref (F, N, 3).

    The graph-edit ratio of a sample whose reference has no bond among ``atoms`` is NaN (nothing to
    divide by); the graph comparison itself stays defined.
    """
    sel = np.arange(len(z)) if atoms is None else np.asarray(atoms)
    Ag = adjacency(gen[..., sel, :], z[sel])
    Ar = adjacency(ref[..., sel, :], z[sel])[:, None]
    iu = np.triu_indices(len(sel), 1)
    diff = (Ag != Ar)[..., iu[0], iu[1]].sum(-1)
    n_ref = Ar[..., iu[0], iu[1]].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ged = np.where(n_ref > 0, diff / np.maximum(n_ref, 1), np.nan)
    return diff == 0, np.broadcast_to(ged, diff.shape)


def clash_counts(gen: np.ndarray, z: np.ndarray, ref_bonds: np.ndarray, clash_distance: float = 2.0) -> np.ndarray:
    """Number of clashing heavy-atom pairs (>= 3 bonds apart, closer than ``clash_distance``) per sample.

    Raises :class:`InputError` when no heavy-atom pair is three or more bonds apart (no pair can clash,
    so a clash rate would be a rate over nothing).
    """
    heavy = np.flatnonzero(np.asarray(z) > 1)
    D = graph_distances(ref_bonds, len(z), 3)
    i, j = np.triu_indices(len(heavy), 1)
    a, b = heavy[i], heavy[j]
    keep = D[a, b] >= 3
    a, b = a[keep], b[keep]
    if len(a) == 0:
        raise InputError("clash counts: no heavy-atom pair is three or more bonds apart")
    d = np.linalg.norm(gen[..., a, :] - gen[..., b, :], axis=-1)
    return (d < clash_distance).sum(-1)


def sample_spread(gen: np.ndarray) -> float:
    """Mean aligned all-atom RMSD between two samples of the same CG frame (Å); gen (F, S, N, 3).

    NaN with fewer than two samples per frame (no pair)."""
    S = gen.shape[1]
    if S < 2:
        return float("nan")
    i, j = np.triu_indices(S, 1)
    return float(np.mean([kabsch_rmsd(g[i], g[j]).mean() for g in gen]))


def diversity(gen: np.ndarray, ref: np.ndarray) -> float:
    """1 - mean sample-sample RMSD / mean sample-reference RMSD (aligned, all atoms), mean over frames.

    NaN with fewer than two samples per frame; frames whose samples all equal their reference (0/0) are
    left out of the mean, NaN if that leaves none.
    """
    F, S = gen.shape[:2]
    if S < 2:
        return float("nan")
    i, j = np.triu_indices(S, 1)
    vals = []
    for f in range(F):
        ss = kabsch_rmsd(gen[f, i], gen[f, j]).mean()
        sr = kabsch_rmsd(gen[f], ref[f][None]).mean()
        vals.append(1.0 - ss / sr if sr > 0 else np.nan)
    vals = np.asarray(vals)
    return float(vals[np.isfinite(vals)].mean()) if np.isfinite(vals).any() else float("nan")


def cov_mat(gen: np.ndarray, ref: np.ndarray, threshold: float = 0.5, atoms: np.ndarray | None = None,
            max_ref: int = 500, max_gen: int = 2000, seed: int = 0, perms: np.ndarray | None = None,
            groups: list[np.ndarray] | None = None) -> tuple[float, float]:
    """ConfVAE coverage and matching (recall): gen (G, N, 3), ref (M, N, 3); random subsets above the caps.

    ``perms``, ``groups``: equivalent atoms for a symmetry-aware RMSD (see :func:`symmetry_rmsd`).
    """
    rng = np.random.default_rng(seed)
    gen = np.asarray(gen).reshape(-1, *np.shape(gen)[-2:])
    ref = np.asarray(ref).reshape(-1, *np.shape(ref)[-2:])
    if len(ref) > max_ref:
        ref = ref[rng.choice(len(ref), max_ref, replace=False)]
    if len(gen) > max_gen:
        gen = gen[rng.choice(len(gen), max_gen, replace=False)]
    if len(gen) == 0 or len(ref) == 0:
        raise InputError(f"COV/MAT need generated and reference structures, got {len(gen)} and {len(ref)}")
    best = np.array([symmetry_rmsd(gen, r[None], perms, atoms, groups).min() for r in ref])
    return float((best < threshold).mean()), float(best.mean())


def as_frames(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape generated (F*S, N, 3) or (F, S, N, 3) and reference (F, N, 3) to (F, S, N, 3), (F, N, 3)."""
    gen = np.asarray(gen, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3 or len(ref) == 0:
        raise InputError(f"no reference frames to compare with (reference shape {ref.shape})")
    if gen.size == 0:
        raise InputError(f"no generated structures (shape {gen.shape})")
    if gen.ndim == 3:
        if gen.shape[1:] != ref.shape[1:]:
            raise InputError(f"generated structures have {gen.shape[1]} atoms, references {ref.shape[1]}")
        if len(gen) % len(ref):
            raise InputError(f"{len(gen)} generated frames are not a whole number of samples for "
                             f"{len(ref)} reference frames (expected frames x samples, frame-major)")
        gen = gen.reshape(len(ref), len(gen) // len(ref), *gen.shape[1:])
    if gen.ndim != 4 or gen.shape[0] != ref.shape[0] or gen.shape[2:] != ref.shape[1:]:
        raise InputError(f"generated shape {gen.shape} does not fit reference shape {ref.shape}")
    return gen, ref


def compute_metrics(gen: np.ndarray, ref: np.ndarray, z: np.ndarray, clash_distance: float = 2.0,
                    cov_threshold: float = 0.5, ref_bonds: np.ndarray | None = None,
                    perms: np.ndarray | None = None, max_perms: int = 1000) -> dict[str, Any]:
    """All structural metrics above for gen (F, S, N, 3) or (F*S, N, 3) against ref (F, N, 3).

    ``ref_bonds``: the reference topology (default: covalent bonds of the first reference frame).
    ``perms``: equivalent-atom permutations (P, N) for the symmetry-aware RMSDs; default the automorphisms
    of the reference bond graph with element labels, all of them when there are at most ``max_perms``
    (``symmetry_search: "exhaustive"``), else the skeleton automorphisms with the best assignment within
    terminal sets (``"alternating"``, see :func:`symmetry_rmsd`). NaN figures come with their reason in
    ``nan_reasons``.
    """
    gen, ref = as_frames(gen, ref)
    z = np.asarray(z)
    if len(z) != ref.shape[1]:
        raise InputError(f"{len(z)} atomic numbers for {ref.shape[1]} atoms")
    heavy = np.flatnonzero(z > 1)
    if ref_bonds is None:
        ref_bonds = bonds_from_adjacency(adjacency(ref[0], z))
    groups = None
    if perms is None:
        n_auto = automorphism_count(ref_bonds, z, max_perms)
        if n_auto <= max_perms:
            perms = expand_terminal(skeleton_automorphisms(ref_bonds, z), terminal_groups(ref_bonds, z))
        else:  # too many to list: skeleton automorphisms x best assignment within terminal sets
            perms = skeleton_automorphisms(ref_bonds, z, max_perms)
            groups = terminal_groups(ref_bonds, z)
    else:
        n_auto = len(perms)
    why: dict[str, str] = {}
    nan = float("nan")
    r_all_plain = kabsch_rmsd(gen, ref[:, None])
    r_all = symmetry_rmsd(gen, ref[:, None], perms, groups=groups)
    valid, ged = bond_graph_scores(gen, ref, z)
    out: dict[str, Any] = {"n_frames": int(gen.shape[0]), "n_samples": int(gen.shape[1]),
                           "n_automorphisms": int(n_auto),
                           "symmetry_search": "exhaustive" if groups is None else "alternating",
                           "rmsd_all": float(r_all.mean()), "rmsd_all_plain": float(r_all_plain.mean()),
                           "rmsd_all_median": float(np.median(r_all)), "valid_ratio": float(valid.mean()),
                           "graph_edit_ratio": _mean(ged, "graph_edit_ratio", "no bonds in the reference", why)}
    if len(heavy):
        r_heavy = symmetry_rmsd(gen, ref[:, None], perms, heavy, groups)
        valid_h, ged_h = bond_graph_scores(gen, ref, z, heavy)
        cov, mat = cov_mat(gen, ref, cov_threshold, heavy, perms=perms, groups=groups)
        out.update({"rmsd_heavy": float(r_heavy.mean()),
                    "rmsd_heavy_plain": float(kabsch_rmsd(gen[..., heavy, :], ref[:, None, heavy]).mean()),
                    "rmsd_heavy_median": float(np.median(r_heavy)), "valid_ratio_heavy": float(valid_h.mean()),
                    "graph_edit_ratio_heavy": _mean(ged_h, "graph_edit_ratio_heavy",
                                                    "no bond between heavy atoms in the reference", why),
                    "cov": cov, "mat": mat})
    else:
        for k in ("rmsd_heavy", "rmsd_heavy_plain", "rmsd_heavy_median", "valid_ratio_heavy",
                  "graph_edit_ratio_heavy", "cov", "mat"):
            out[k], why[k] = nan, "no heavy atoms"
    try:
        clashes = clash_counts(gen, z, ref_bonds, clash_distance)
        ref_clashes = clash_counts(ref[:, None], z, ref_bonds, clash_distance)
        out.update({"clash_rate": float((clashes > 0).mean()), "clash_pairs": float(clashes.mean()),
                    "clash_rate_reference": float((ref_clashes > 0).mean())})
    except InputError as e:
        for k in ("clash_rate", "clash_pairs", "clash_rate_reference"):
            out[k], why[k] = nan, str(e)
    out["diversity"], out["sample_spread"] = diversity(gen, ref), sample_spread(gen)
    if gen.shape[1] < 2:
        why["diversity"] = why["sample_spread"] = "fewer than two samples per frame"
    elif not np.isfinite(out["diversity"]):
        why["diversity"] = "every sample equals its reference (0/0)"
    out["cov_threshold"] = float(cov_threshold)
    out["nan_reasons"] = why
    return out


def _mean(x: np.ndarray, key: str, reason: str, why: dict[str, str]) -> float:
    """Mean of finite values; NaN (with ``reason`` recorded under ``key``) when there are none."""
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).any():
        why[key] = reason
        return float("nan")
    return float(x[np.isfinite(x)].mean())


def energies(pdb: str, R: np.ndarray) -> np.ndarray:
    """amber14 vacuum energies (kcal/mol) of structures R (..., N, 3) via OpenMM (topology from ``pdb``)."""
    from forcefield.reference import openmm_energy_forces

    R = np.asarray(R, dtype=float)
    E, _ = openmm_energy_forces(pdb, R.reshape(-1, *R.shape[-2:]))
    return E.reshape(R.shape[:-2])
