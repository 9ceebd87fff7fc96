"""Mapped forces: force providers and the consistency condition of linear CG maps.

For bead positions ``X = C R`` (C: rows sum to one) any constant force map ``W`` with ``W C^T = I``
gives instantaneous CG forces ``f = W F`` whose average conditioned on ``X`` is the mean force
``-dA/dX`` (Noid et al., J. Chem. Phys. 128, 244114, 2008; Ciccotti et al. 2005): shifting the atoms by
``W^T dX`` moves the beads by exactly ``dX``. For non-overlapping beads the choice used throughout the
workbench is ``W[k, i] = 1`` for the atoms of bead k (the sum of their forces).

:func:`optimal_force_map` picks, among all consistent maps, the one whose mapped forces have the least
variance on a set of reference forces (the "statistically optimal force aggregation" of Krämer et al.,
J. Chem. Theory Comput. 19, 3496, 2023, derived here in closed form): the mean force is the same for every
consistent map, so less variance means less noise in the force-matching targets.

Units: forces in kcal/mol/Å unless stated; MDAnalysis stores kJ/(mol Å).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from forcefield.errors import InputError

ForceProvider = Callable[[np.ndarray], np.ndarray]


def as_force_provider(obj: Any) -> ForceProvider:
    """Wrap ``obj`` as ``R (M, N, 3) Å -> F (M, N, 3) kcal/mol/Å``.

    Accepts any object with ``.predict(R)`` (e.g. ``forcefield.KernelForceField``) or a callable; either may
    return ``F`` or ``(E, F)``.
    """
    fn = getattr(obj, "predict", None)
    if fn is None:
        if not callable(obj):
            raise InputError(f"force provider {type(obj).__name__} is neither callable nor has .predict(R)")
        fn = obj

    def provider(R: np.ndarray) -> np.ndarray:
        R = np.asarray(R, dtype=float)
        out = fn(R)
        F = out[-1] if isinstance(out, (tuple, list)) else out
        if hasattr(F, "detach"):
            F = F.detach().cpu().numpy()
        F = np.asarray(F, dtype=float)
        if F.shape != R.shape:
            F = F.reshape(R.shape) if F.size == R.size else F
        if F.shape != R.shape:
            raise InputError(f"force provider returned forces of shape {F.shape} for positions {R.shape}")
        if not np.isfinite(F).all():
            raise InputError("force provider returned NaN or infinite forces")
        return F

    return provider


def consistency_error(C: np.ndarray, W: np.ndarray) -> float:
    """max |W C^T - I|: zero for a force map consistent with the position map."""
    C, W = np.asarray(C, float), np.asarray(W, float)
    return float(np.abs(W @ C.T - np.eye(len(C))).max())


def mean_force_gaussian(C: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Exact mean-force matrix for ``U = ½ Σ_d r_d^T K r_d`` (K positive definite, per Cartesian axis).

    The CG free energy is ``A(X) = ½ Σ_d X_d^T (C K^-1 C^T)^-1 X_d`` (independent of temperature up to a
    constant), so the mean force is ``-(C K^-1 C^T)^-1 X``; this returns ``(C K^-1 C^T)^-1``.
    """
    C = np.asarray(C, float)
    return np.linalg.inv(C @ np.linalg.solve(K, C.T))


def constraint_groups(n_atoms: int, pairs: np.ndarray | None) -> np.ndarray:
    """(N,) group label per atom: atoms joined by constrained pairs (e.g. X-H bonds) share a label."""
    parent = np.arange(int(n_atoms))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in (np.zeros((0, 2), int) if pairs is None else np.asarray(pairs, int).reshape(-1, 2)):
        if not (0 <= i < n_atoms and 0 <= j < n_atoms):
            raise InputError(f"constrained pair ({i}, {j}) is outside the {n_atoms} atoms")
        parent[root(i)] = root(j)
    return np.unique([root(i) for i in range(int(n_atoms))], return_inverse=True)[1]


def optimal_force_map(C: np.ndarray, F: np.ndarray, ridge: float = 1e-6,
                      constrained: np.ndarray | None = None) -> np.ndarray:
    """The consistent force map with the least mapped-force variance on reference forces F.

    Minimises ``E |W F|^2`` (summed over beads and Cartesian axes, averaged over frames) subject to
    ``W C^T = I``. With the atomic second-moment matrix ``S = <F F^T>`` (N x N, the three axes pooled) the
    Lagrange conditions give, in closed form,

        W = (C S^-1 C^T)^-1 C S^-1.

    Every consistent W gives the same conditional mean (the mean force), so the mapped forces stay valid
    force-matching targets; only their noise drops. With holonomic constraints (``constrained``: the
    constrained atom pairs, e.g. every X-H bond of an HBonds run) the saved forces lack the constraint
    forces, which act equally and oppositely on the two atoms; the map then gives every atom of a
    constrained group one weight per bead (W = W_g A, A the group indicator), so those forces cancel, and
    optimises W_g over the group-summed forces (as aggforce does).

    Parameters
    ----------
    C : (n, N) position map (rows sum to one), e.g. ``mapping.matrix()``.
    F : (M, N, 3) reference atomic forces (kcal/mol/Å), at least a few hundred frames.
    ridge : relative diagonal shift of S (times its mean diagonal) for a well-conditioned inverse.
    constrained : (K, 2) atom pairs held by constraints in the reference MD (None: none).

    Returns
    -------
    W : (n, N) force map with ``W @ C.T = I`` (to round-off).
    """
    C = np.asarray(C, dtype=float)
    F = np.asarray(F, dtype=float)
    if C.ndim != 2 or F.ndim != 3 or F.shape[1:] != (C.shape[1], 3):
        raise InputError(f"optimal_force_map: forces must be (frames, {C.shape[-1]}, 3), got {F.shape}")
    if len(F) < 2 or not np.isfinite(F).all():
        raise InputError("optimal_force_map: need at least 2 frames of finite forces")
    g = constraint_groups(C.shape[1], constrained)
    A = np.zeros((g.max() + 1, C.shape[1]))
    A[g, np.arange(C.shape[1])] = 1.0  # group indicator: W = W_g A
    Fg = np.einsum("gi,mid->mgd", A, F)
    S = np.einsum("mid,mjd->ij", Fg, Fg) / (3 * len(F))
    S[np.diag_indices_from(S)] += ridge * float(np.trace(S)) / len(S)
    Cg = C @ A.T  # (n, g): W C^T = W_g (A C^T) = W_g Cg^T
    SiCt = np.linalg.solve(S, Cg.T)  # S^-1 Cg^T (g, n)
    W = np.linalg.solve(Cg @ SiCt, SiCt.T) @ A  # (Cg S^-1 Cg^T)^-1 Cg S^-1 A, S symmetric
    err = consistency_error(C, W)
    if err > 1e-6:
        raise InputError(f"optimal_force_map: ill-conditioned problem (|W C^T - I| = {err:.1e})")
    return W
