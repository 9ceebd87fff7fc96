"""Training geometries in descriptor space and descriptor Jacobians, for the kernel products (float64).

:class:`TrainingSet` holds the training descriptors and the permutations' index maps; :class:`PairJacobian`
applies the descriptor Jacobians of a fixed batch as GEMMs with the pair incidence matrix; and
:func:`dense_jacobian` builds them densely (the uncertainty's cross-covariance blocks). Used by
:mod:`forcefield.kernel.kernel`, which re-exports them. Units: Å and Å⁻¹ (inverse distances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .descriptor import descriptor, descriptor_permutation


@dataclass
class TrainingSet:
    """Descriptors of the training geometries, on one device, float64.

    Attributes
    ----------
    d : (M, D) inverse distances. diff : (M, D, 3) pair vectors. d3 : (M, D) cubed inverse distances.
    q : (P, D) descriptor index maps of the permutations (row 0 is the identity).
    R : (M, N, 3) positions. perms : (P, N) atom permutations.
    """

    d: torch.Tensor
    diff: torch.Tensor
    d3: torch.Tensor
    q: torch.Tensor
    R: torch.Tensor
    perms: torch.Tensor

    @classmethod
    def from_positions(cls, R: torch.Tensor, perms: np.ndarray) -> "TrainingSet":
        d, diff, d3 = descriptor(R)
        q = torch.as_tensor(np.stack([descriptor_permutation(p) for p in perms]), device=R.device)
        return cls(d, diff, d3, q, R, torch.as_tensor(np.asarray(perms), device=R.device))

    @property
    def n(self) -> int:
        return self.d.shape[0]

    @property
    def n_atoms(self) -> int:
        return int(round((1 + math.sqrt(1 + 8 * self.d.shape[1])) / 2))

    def permuted(self, x: torch.Tensor) -> torch.Tensor:
        """(M, D) descriptor-space rows -> (M * P, D) rows of every permuted copy (training-point major)."""
        return x[:, self.q].reshape(-1, x.shape[1])


class PairJacobian:
    """The descriptor Jacobians J of a fixed set of B geometries, applied as GEMMs with the pair incidence
    matrix (D x N, +1 on atom i and -1 on atom j of each pair) instead of gathers and scatters.

    ``J v`` = Σ_xyz (inc v) ⊙ C and ``Jᵀ g`` = incᵀ (g ⊙ C) with C = -d³ (r_i - r_j) kept pair-major (D, B, 3),
    so each application is one GEMM of 2·N·D·3B flop and two passes over B·D·3 numbers (the gather/scatter
    forms make about twice as many passes and index_add_ is slow). Worth it for small molecules (the GEMM
    grows with N·D); exact: the incidence entries are ±1 and 0.
    """

    def __init__(self, diff: torch.Tensor, d3: torch.Tensor) -> None:
        B, D, _ = diff.shape
        n = int(round((1 + math.sqrt(1 + 8 * D)) / 2))
        i, j = np.tril_indices(n, k=-1)
        ar = torch.arange(D, device=diff.device)
        self.inc = torch.zeros(D, n, dtype=diff.dtype, device=diff.device)
        self.inc[ar, torch.as_tensor(i, device=diff.device)] = 1.0
        self.inc[ar, torch.as_tensor(j, device=diff.device)] = -1.0
        self.C = (-d3[..., None] * diff).transpose(0, 1).contiguous()  # (D, B, 3)
        self.B, self.D, self.n = B, D, n

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """J v: (B, D) for Cartesian vectors v (B, N, 3)."""
        x = (self.inc @ v.transpose(0, 1).reshape(self.n, -1)).view(self.D, self.B, 3).mul_(self.C)
        return x[..., 0].add_(x[..., 1]).add_(x[..., 2]).T.contiguous()

    def apply_t(self, g: torch.Tensor) -> torch.Tensor:
        """Jᵀ g: (B, N, 3) for descriptor-space vectors g (B, D)."""
        w = torch.mul(g.T[..., None], self.C, out=torch.empty_like(self.C))  # (D, B, 3), pair-major
        return (self.inc.T @ w.view(self.D, -1)).view(self.n, self.B, 3).transpose(0, 1)


def dense_jacobian(diff: torch.Tensor, d3: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """Dense descriptor Jacobians (B, D, 3N) from pair vectors (B, D, 3) and cubes (B, D).

    ``transposed``: the contiguous transposes (B, 3N, D) instead.
    """
    B, D, _ = diff.shape
    n = int(round((1 + math.sqrt(1 + 8 * D)) / 2))
    i, j = np.tril_indices(n, k=-1)
    if transposed:
        JT = torch.zeros(B, n, 3, D, dtype=diff.dtype, device=diff.device)
        g = (-d3[..., None] * diff).transpose(1, 2)  # (B, 3, D)
        ar = torch.arange(D, device=diff.device)
        JT[:, torch.as_tensor(i, device=diff.device), :, ar] = g.permute(2, 0, 1)
        JT[:, torch.as_tensor(j, device=diff.device), :, ar] = -g.permute(2, 0, 1)
        return JT.reshape(B, 3 * n, D)
    J = torch.zeros(B, D, n, 3, dtype=diff.dtype, device=diff.device)
    g = -d3[..., None] * diff
    ar = torch.arange(D, device=diff.device)
    J[:, ar, torch.as_tensor(i, device=diff.device)] = g
    J[:, ar, torch.as_tensor(j, device=diff.device)] = -g
    return J.reshape(B, D, 3 * n)
