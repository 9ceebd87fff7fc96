"""Geometry shared by every package: distances, angles, dihedrals, bonds and alignment.

Functions accept numpy arrays (or torch tensors where noted) with coordinates in Å.
"""
from __future__ import annotations

import numpy as np

from .elements import COVALENT_RADII


def pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i > j, of the n(n-1)/2 atom pairs in lower-triangle order (as sGDML)."""
    i, j = np.tril_indices(n, k=-1)
    return i, j


def distances(R: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """|R[..., i, :] - R[..., j, :]| for index arrays i, j; works on (..., N, 3) arrays."""
    return np.linalg.norm(R[..., i, :] - R[..., j, :], axis=-1)


def angles(R: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """Bond angles (radians) at the middle atom of each (i, j, k) triple; R is (..., N, 3)."""
    t = np.asarray(triples, dtype=int).reshape(-1, 3)
    a = R[..., t[:, 0], :] - R[..., t[:, 1], :]
    b = R[..., t[:, 2], :] - R[..., t[:, 1], :]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def dihedrals(R: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Dihedral angles (radians, in (-pi, pi]) of each (i, j, k, l) quadruple; R is (..., N, 3)."""
    q = np.asarray(quads, dtype=int).reshape(-1, 4)
    b0 = R[..., q[:, 0], :] - R[..., q[:, 1], :]
    b1 = R[..., q[:, 2], :] - R[..., q[:, 1], :]
    b2 = R[..., q[:, 3], :] - R[..., q[:, 2], :]
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    x = (v * w).sum(-1)
    y = (np.cross(b1n, v) * w).sum(-1)
    return np.arctan2(y, x)


def covalent_bonds(R: np.ndarray, z: np.ndarray, scale: float = 1.3) -> np.ndarray:
    """Bonds (i < j) between atoms closer than ``scale`` times the sum of covalent radii.

    ``R`` is one frame (N, 3). Returns an (n_bonds, 2) int array sorted lexicographically.
    """
    R = np.asarray(R, dtype=float)
    rad = COVALENT_RADII[np.asarray(z, dtype=int)]
    d = np.linalg.norm(R[:, None, :] - R[None, :, :], axis=-1)
    cut = scale * (rad[:, None] + rad[None, :])
    i, j = np.nonzero(np.triu(d < cut, k=1))
    return np.stack([i, j], axis=1)


def kabsch(P: np.ndarray, Q: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Optimal rotation and translation taking P onto Q (both (N, 3)): ``P @ Rot.T + t ≈ Q``."""
    w = np.ones(len(P)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    pc, qc = w @ P, w @ Q
    H = ((P - pc) * w[:, None]).T @ (Q - qc)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    D = np.diag([1.0, 1.0, d])
    rot = Vt.T @ D @ U.T
    return rot, qc - pc @ rot.T


def aligned_rmsd(P: np.ndarray, Q: np.ndarray, weights: np.ndarray | None = None) -> float:
    """RMSD between P and Q (N, 3) after optimal superposition of P onto Q."""
    rot, t = kabsch(P, Q, weights)
    diff = P @ rot.T + t - Q
    w = np.ones(len(P)) if weights is None else np.asarray(weights, dtype=float)
    return float(np.sqrt((w * (diff**2).sum(-1)).sum() / w.sum()))


def kabsch_rmsd(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Aligned RMSD (Å) of each P[k] onto Q[k], batched: P, Q (..., N, 3) broadcastable, no weights.

    Same value as :func:`aligned_rmsd` (proper rotations only), from the singular values of the
    covariance, so no rotation is formed.
    """
    P, Q = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(Q, dtype=float))
    shape = P.shape[:-2]
    P = P.reshape(-1, *P.shape[-2:])
    Q = Q.reshape(-1, *Q.shape[-2:])
    Pc = P - P.mean(1, keepdims=True)
    Qc = Q - Q.mean(1, keepdims=True)
    H = np.einsum("kni,knj->kij", Pc, Qc)
    U, S, Vt = np.linalg.svd(H)
    S[:, -1] *= np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    msd = ((Pc**2).sum((1, 2)) + (Qc**2).sum((1, 2)) - 2.0 * S.sum(1)) / P.shape[1]
    return np.sqrt(np.clip(msd, 0.0, None)).reshape(shape)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix (3, 3)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])
