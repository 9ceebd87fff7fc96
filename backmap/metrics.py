"""Metrics for backmapped (generated) all-atom structures against references.

Definitions (all distances in Å):

* **RMSD** (``rmsd_all``, ``rmsd_heavy``): root-mean-square deviation after optimal superposition
  (Kabsch, no mass weights) of each sample onto the reference frame it was generated from, averaged over
  samples; heavy = atoms other than hydrogen. (CGVAE's script compares without alignment.)
* **Bond graph**: atoms i, j are bonded when ``d_ij < 1.3 (r_i + r_j)`` with covalent radii (as CGVAE,
  :func:`forcefield.geometry.covalent_bonds`). ``valid_ratio``: share of samples whose whole graph equals the
  graph of its reference frame. ``graph_edit_ratio``: edges present in exactly one of the two graphs divided
  by the edges of the reference graph, averaged over samples (``_heavy``: the same on heavy atoms only).
* **Clash**: a pair of heavy atoms three or more bonds apart in the reference topology graph (bonds of the
  first reference frame) closer than ``clash_distance`` (default 2.0 Å, the hinge distance of GenZProt; no
  such contact occurs in alanine dipeptide MD at 300 K, the closest are ~2.6 Å). ``clash_rate``: share of
  samples with at least one clash; ``clash_pairs``: mean number of clashing pairs per sample.
* **Diversity**: per CG frame, ``1 - mean(sample-sample RMSD) / mean(sample-reference RMSD)`` (FlowBack's
  definition with aligned all-atom RMSD), averaged over frames; needs two or more samples per frame.
  About 0 when the reference is exchangeable with the samples (a calibrated sampler), 1 for collapsed samples,
  negative when samples scatter more widely than their distance to the reference. ``sample_spread`` is the
  mean sample-sample RMSD itself.
* **COV / MAT** (ConfVAE, recall form): for a reference set and a generated set, each reference
  conformer's smallest heavy-atom aligned RMSD to any generated one; COV = share below ``threshold``,
  MAT = their mean.
* **Energy**: amber14 (OpenMM, vacuum) potential energies in kcal/mol of the generated and reference
  structures, when a topology PDB is given.

Generated structures are ordered frame-major: sample s of reference frame f is row ``f * n_samples + s``.
"""
from __future__ import annotations

import numpy as np

from forcefield.elements import COVALENT_RADII
from forcefield.errors import InputError

from .losses import graph_distances


def kabsch_rmsd(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Aligned RMSD of each P[k] onto Q[k]; P, Q (..., N, 3) broadcastable. Batched form of
    :func:`forcefield.geometry.aligned_rmsd` (same result, tested against it)."""
    P, Q = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(Q, dtype=float))
    shape = P.shape[:-2]
    P = P.reshape(-1, *P.shape[-2:])
    Q = Q.reshape(-1, *Q.shape[-2:])
    Pc = P - P.mean(1, keepdims=True)
    Qc = Q - Q.mean(1, keepdims=True)
    H = np.einsum("kni,knj->kij", Pc, Qc)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("kij,kjl->kil", U, Vt)))
    S[:, -1] *= d
    msd = ((Pc**2).sum((1, 2)) + (Qc**2).sum((1, 2)) - 2.0 * S.sum(1)) / P.shape[1]
    return np.sqrt(np.clip(msd, 0.0, None)).reshape(shape)


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
    """Per sample: (graph equals reference, graph-edit ratio). gen (F, S, N, 3), ref (F, N, 3)."""
    sel = np.arange(len(z)) if atoms is None else np.asarray(atoms)
    Ag = adjacency(gen[..., sel, :], z[sel])
    Ar = adjacency(ref[..., sel, :], z[sel])[:, None]
    iu = np.triu_indices(len(sel), 1)
    diff = (Ag != Ar)[..., iu[0], iu[1]].sum(-1)
    n_ref = np.maximum(Ar[..., iu[0], iu[1]].sum(-1), 1)
    return diff == 0, diff / n_ref


def clash_counts(gen: np.ndarray, z: np.ndarray, ref_bonds: np.ndarray, clash_distance: float = 2.0) -> np.ndarray:
    """Number of clashing heavy-atom pairs (>= 3 bonds apart, closer than ``clash_distance``) per sample."""
    heavy = np.flatnonzero(np.asarray(z) > 1)
    D = graph_distances(len(z), ref_bonds, 3)
    i, j = np.triu_indices(len(heavy), 1)
    a, b = heavy[i], heavy[j]
    keep = D[a, b] >= 3
    a, b = a[keep], b[keep]
    d = np.linalg.norm(gen[..., a, :] - gen[..., b, :], axis=-1)
    return (d < clash_distance).sum(-1)


def sample_spread(gen: np.ndarray) -> float:
    """Mean aligned all-atom RMSD between two samples of the same CG frame (Å); gen (F, S, N, 3)."""
    S = gen.shape[1]
    if S < 2:
        return float("nan")
    i, j = np.triu_indices(S, 1)
    return float(np.mean([kabsch_rmsd(g[i], g[j]).mean() for g in gen]))


def diversity(gen: np.ndarray, ref: np.ndarray) -> float:
    """1 - mean sample-sample RMSD / mean sample-reference RMSD (aligned, all atoms), mean over frames."""
    F, S = gen.shape[:2]
    if S < 2:
        return float("nan")
    i, j = np.triu_indices(S, 1)
    vals = []
    for f in range(F):
        ss = kabsch_rmsd(gen[f, i], gen[f, j]).mean()
        sr = kabsch_rmsd(gen[f], ref[f][None]).mean()
        vals.append(1.0 - ss / sr if sr > 0 else 0.0)
    return float(np.mean(vals))


def cov_mat(gen: np.ndarray, ref: np.ndarray, threshold: float = 0.5, atoms: np.ndarray | None = None,
            max_ref: int = 500, max_gen: int = 2000, seed: int = 0) -> tuple[float, float]:
    """ConfVAE coverage and matching (recall): gen (G, N, 3), ref (M, N, 3); random subsets above the caps."""
    rng = np.random.default_rng(seed)
    gen = np.asarray(gen).reshape(-1, *np.shape(gen)[-2:])
    ref = np.asarray(ref).reshape(-1, *np.shape(ref)[-2:])
    if len(ref) > max_ref:
        ref = ref[rng.choice(len(ref), max_ref, replace=False)]
    if len(gen) > max_gen:
        gen = gen[rng.choice(len(gen), max_gen, replace=False)]
    if atoms is not None:
        gen, ref = gen[:, atoms], ref[:, atoms]
    best = np.array([kabsch_rmsd(gen, r[None]).min() for r in ref])
    return float((best < threshold).mean()), float(best.mean())


def as_frames(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape generated (F*S, N, 3) or (F, S, N, 3) and reference (F, N, 3) to (F, S, N, 3), (F, N, 3)."""
    gen = np.asarray(gen, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if ref.ndim == 2:
        ref = ref[None]
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
                    cov_threshold: float = 0.5, ref_bonds: np.ndarray | None = None) -> dict[str, float]:
    """All structural metrics above for gen (F, S, N, 3) or (F*S, N, 3) against ref (F, N, 3)."""
    gen, ref = as_frames(gen, ref)
    z = np.asarray(z)
    if len(z) != ref.shape[1]:
        raise InputError(f"{len(z)} atomic numbers for {ref.shape[1]} atoms")
    heavy = np.flatnonzero(z > 1)
    if ref_bonds is None:
        A0 = adjacency(ref[0], z)
        ref_bonds = np.argwhere(np.triu(A0, 1))
    r_all = kabsch_rmsd(gen, ref[:, None])
    r_heavy = kabsch_rmsd(gen[..., heavy, :], ref[:, None, heavy])
    valid, ged = bond_graph_scores(gen, ref, z)
    valid_h, ged_h = bond_graph_scores(gen, ref, z, heavy)
    clashes = clash_counts(gen, z, ref_bonds, clash_distance)
    ref_clashes = clash_counts(ref[:, None], z, ref_bonds, clash_distance)
    cov, mat = cov_mat(gen, ref, cov_threshold, heavy)
    return {
        "n_frames": int(gen.shape[0]), "n_samples": int(gen.shape[1]),
        "rmsd_all": float(r_all.mean()), "rmsd_heavy": float(r_heavy.mean()),
        "rmsd_all_median": float(np.median(r_all)), "rmsd_heavy_median": float(np.median(r_heavy)),
        "valid_ratio": float(valid.mean()), "valid_ratio_heavy": float(valid_h.mean()),
        "graph_edit_ratio": float(ged.mean()), "graph_edit_ratio_heavy": float(ged_h.mean()),
        "clash_rate": float((clashes > 0).mean()), "clash_pairs": float(clashes.mean()),
        "clash_rate_reference": float((ref_clashes > 0).mean()),
        "diversity": diversity(gen, ref), "sample_spread": sample_spread(gen),
        "cov": cov, "mat": mat, "cov_threshold": float(cov_threshold),
    }


def energies(pdb: str, R: np.ndarray) -> np.ndarray:
    """amber14 vacuum energies (kcal/mol) of structures R (..., N, 3) via OpenMM (topology from ``pdb``)."""
    from forcefield.reference import openmm_energy_forces

    R = np.asarray(R, dtype=float)
    E, _ = openmm_energy_forces(pdb, R.reshape(-1, *R.shape[-2:]))
    return E.reshape(R.shape[:-2])
