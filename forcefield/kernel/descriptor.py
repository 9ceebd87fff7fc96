"""Inverse-distance descriptor of a molecule and its Jacobian, in torch.

For N atoms the descriptor holds the D = N(N-1)/2 inverse distances 1/|r_i - r_j| over the pairs
(i, j) with i > j, in the row-major order of the strict lower triangle (``np.tril_indices(N, -1)``),
the order sGDML uses, so imported sGDML models need no reordering. Positions in Å, descriptor in 1/Å.
"""
from __future__ import annotations

import numpy as np
import torch


def pair_index(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) arrays of the D atom pairs, i > j, in descriptor order."""
    return np.tril_indices(n_atoms, k=-1)


def descriptor_permutation(perm: np.ndarray) -> np.ndarray:
    """Index map ``q`` (D,) such that ``desc(R[perm]) == desc(R)[q]`` for an atom permutation ``perm``."""
    perm = np.asarray(perm, dtype=int)
    n = len(perm)
    lookup = np.zeros((n, n), dtype=int)
    i, j = pair_index(n)
    lookup[i, j] = np.arange(len(i))
    lookup[j, i] = lookup[i, j]
    return lookup[perm[i], perm[j]]


def descriptor(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse distances of positions R (B, N, 3).

    Returns
    -------
    d : (B, D) inverse distances.
    diff : (B, D, 3) the vectors r_i - r_j of each pair.
    d3 : (B, D) the cubes d**3 (the Jacobian is ``-d3 * diff`` on atom i and ``+d3 * diff`` on atom j).
    """
    n = R.shape[1]
    i, j = pair_index(n)
    i_t = torch.as_tensor(i, device=R.device)
    j_t = torch.as_tensor(j, device=R.device)
    diff = R[:, i_t] - R[:, j_t]
    d = torch.rsqrt((diff * diff).sum(-1))
    return d, diff, d * d * d


def jacobian_t_apply(g: torch.Tensor, diff: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """Cartesian vectors J^T g (B, N, 3) for descriptor-space vectors g (B, D).

    J is the Jacobian of the descriptor with respect to the positions; ``J^T g`` turns a descriptor-space
    gradient into a Cartesian one.
    """
    B, D = g.shape
    n = int(round((1 + np.sqrt(1 + 8 * D)) / 2))
    i, j = pair_index(n)
    w = (-g * d3)[..., None] * diff  # contribution to atom i; atom j gets the opposite
    out = torch.zeros(B, n, 3, dtype=g.dtype, device=g.device)
    out.index_add_(1, torch.as_tensor(i, device=g.device), w)
    out.index_add_(1, torch.as_tensor(j, device=g.device), -w)
    return out


def jacobian_apply(v: torch.Tensor, diff: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """Descriptor-space vectors J v (B, D) for Cartesian vectors v (B, N, 3)."""
    n = v.shape[1]
    i, j = pair_index(n)
    i_t = torch.as_tensor(i, device=v.device)
    j_t = torch.as_tensor(j, device=v.device)
    x = (v[:, i_t] - v[:, j_t]).mul_(diff)
    # the three components summed by hand: a reduction over the trailing size-3 axis is ~2.5x slower
    return x[..., 0].add(x[..., 1]).add_(x[..., 2]).mul_(d3).neg_()
