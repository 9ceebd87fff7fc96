"""Frame alignment, the linear bead->atom decoder and reconstruction errors of a mapping.

The reconstruction error of any hard mapping (learned or preset) is measured the same way:

1. frames are superposed (Kabsch, unweighted, all atoms) onto a reference structure, the iterated mean
   of the training frames, so that a linear decoder is meaningful;
2. a linear decoder ``r_i = b_i + Σ_k D[i, k] X_k`` (the same D for x, y, z, a free offset per atom and
   axis) is fitted by (ridge-stabilised) least squares on the aligned training frames;
3. the RMSD is ``sqrt(mean over frames and atoms of |r - r̂|²)`` on held-out frames, aligned onto the
   same reference.

Units: Å.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def frame_rotations(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Rotations (M, 3, 3) superposing each centred frame of P (M, N, 3) onto the reference Q (N, 3).

    Uses :func:`forcefield.geometry.kabsch` frame by frame: ``(P[m] - mean) @ rot[m].T`` is the aligned frame.
    """
    from forcefield.geometry import kabsch

    Qc = Q - Q.mean(0)
    return np.stack([kabsch(p - p.mean(0), Qc)[0] for p in P])


def align_frames(R: np.ndarray, reference: np.ndarray | None = None, iterations: int = 4,
                 F: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Superpose frames R (M, N, 3) onto ``reference`` (default: their iterated mean, centred at 0).

    Returns (aligned R, reference, rotated forces F or None). Forces are rotated with their frames.
    """
    R = np.asarray(R, dtype=float)
    if reference is None:
        ref = R[0] - R[0].mean(0)
        for _ in range(max(1, iterations)):
            A, _, _ = align_frames(R, ref)
            ref = A.mean(0)
            ref -= ref.mean(0)
    else:
        ref = np.asarray(reference, dtype=float)
        ref = ref - ref.mean(0)
    rot = frame_rotations(R, ref)
    A = np.einsum("mnj,mij->mni", R - R.mean(1, keepdims=True), rot)
    Fr = None if F is None else np.einsum("mnj,mij->mni", np.asarray(F, dtype=float), rot)
    return A, ref, Fr


@dataclass
class LinearDecoder:
    """``r̂ = b + D X``: D (N, n_beads), b (N, 3); fitted by least squares on aligned frames."""

    D: np.ndarray
    b: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, R: np.ndarray, ridge: float = 1e-8) -> "LinearDecoder":
        """Fit on bead positions X (M, n, 3) and atom positions R (M, N, 3) (relative ridge ``ridge``)."""
        n, N = X.shape[1], R.shape[1]
        Xm, Rm = X.mean(0), R.mean(0)
        Phi = (X - Xm).transpose(0, 2, 1).reshape(-1, n)
        Y = (R - Rm).transpose(0, 2, 1).reshape(-1, N)
        G = Phi.T @ Phi
        G += ridge * (np.trace(G) / n + 1e-12) * np.eye(n)
        Dt = np.linalg.solve(G, Phi.T @ Y)
        return cls(D=Dt.T, b=Rm - np.einsum("kd,nk->nd", Xm, Dt.T))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.einsum("mkd,nk->mnd", X, self.D) + self.b


def rms(a: np.ndarray) -> float:
    """sqrt(mean over frames and atoms of the squared vector norm)."""
    return float(np.sqrt((np.asarray(a) ** 2).sum(-1).mean()))


def reconstruction_rmsd(mapping: Any, R_train: np.ndarray, R_test: np.ndarray | None = None,
                        aligned: bool = False, subset: np.ndarray | None = None) -> dict[str, float]:
    """Reconstruction RMSD (Å) of a hard mapping with the fitted linear decoder (see module docstring).

    ``aligned=True`` skips alignment (frames already superposed onto a common reference). With ``subset``
    (atom indices, e.g. heavy atoms) the keys ``train_subset``/``test_subset`` give the RMSD over those
    atoms of the same all-atom reconstruction. Returns ``{"train": ..., "test": ...}`` (test only when
    ``R_test`` is given).
    """
    if aligned:
        A, B = np.asarray(R_train, float), None if R_test is None else np.asarray(R_test, float)
    else:
        A, ref, _ = align_frames(R_train)
        B = None if R_test is None else align_frames(R_test, ref)[0]
    C = mapping.matrix()
    dec = LinearDecoder.fit(np.einsum("kn,mnd->mkd", C, A), A)
    out = {}
    for key, S in (("train", A), ("test", B)):
        if S is None:
            continue
        err = dec(np.einsum("kn,mnd->mkd", C, S)) - S
        out[key] = rms(err)
        if subset is not None:
            out[f"{key}_subset"] = rms(err[:, np.asarray(subset, dtype=int)])
    return out


def mapped_force_norm(mapping: Any, F: np.ndarray) -> float:
    """Mean norm |f_k| (kcal/mol/Å) of the mapped bead forces over frames and beads."""
    return float(np.linalg.norm(mapping.map_forces(F), axis=-1).mean())


def objective_terms(assign: np.ndarray, n_beads: int, A: np.ndarray, masses: np.ndarray, weighting: str = "com",
                    F: np.ndarray | None = None) -> dict[str, float]:
    """Hard-map loss terms on aligned frames A: recon MSE (Å², fitted decoder), mean |f|², compactness (Å²)."""
    w = masses if weighting == "com" else np.ones_like(masses)
    C = np.zeros((n_beads, len(assign)))
    C[assign, np.arange(len(assign))] = w
    C /= C.sum(1, keepdims=True)
    X = np.einsum("kn,mnd->mkd", C, A)
    dec = LinearDecoder.fit(X, A)
    out = {"recon": float(((dec(X) - A) ** 2).sum(-1).mean()),
           "compact": float(((A - X[:, assign]) ** 2).sum(-1).mean())}
    if F is not None:
        Wf = np.zeros_like(C)
        Wf[assign, np.arange(len(assign))] = 1.0
        out["force"] = float((np.einsum("kn,mnd->mkd", Wf, F) ** 2).sum(-1).mean())
    return out
