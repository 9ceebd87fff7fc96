"""Fast force posterior std: the separable (intrinsic-coregionalisation) approximation, float64 torch.

The force covariance of the kernel force field between geometries x and b is K(x, b) = J_xᵀ H(x, b) J_b, with
H the descriptor-space Hessian of the symmetrised Matérn-5/2 kernel. Its isotropic part is
κ(x, b) I with κ(x, b) = Σ_p a(|d_x - P_p d_b|), a(ρ) ∝ (1 + √5ρ/σ) exp(-√5ρ/σ) (a Matérn-3/2 profile). Keeping
only that part and taking J_b ≈ J_x for the training frames that condition x, the force kernel becomes
separable, K(x, b) ≈ κ(x, b) G_x, and a vector-valued GP with every output observed at every training input
has the posterior covariance (noise-free)

    Cov[F(x)] ≈ G_x (κ(x, x) - κ_xX K_κ⁻¹ κ_Xx),

so each force component's variance is a prior variance times the scalar shrink factor
v(x) = 1 - κ_xX K_κ⁻¹ κ_Xx / κ(x, x) ∈ [0, 1]: 0 at a training geometry, 1 far from every one. In the same
spirit (J_b ≈ J_x for the frames that condition x) the output scale G is taken from the training frame most
similar to x: its prior force variance per atom (the trace of the atom's 3 x 3 block of K(b, b), computed
once per training frame), mapped onto x's atoms through the best-matching permuted copy and spread evenly
over x, y and z. The std per atom is therefore rotation- and permutation-covariant like the exact one.

K_κ is M x M (M training frames), factorised once; a query costs one M·P x D product (a quarter of a
plain prediction) and an M x M triangular solve: about 1.2-1.6 plain predictions in all, against the r
response columns of the Nyström form (:class:`~forcefield.kernel.uncertainty.ForcePosterior`, tens to
hundreds of predictions). On GFN2-xTB aspirin and alanine dipeptide it ranked per-frame errors at least as
well (``benchmarks/kernel_uncertainty.py``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import InputError
from .descriptor import descriptor
from .uncertainty import SQRT5, ml_amplitude2, prior_diagonal, training_positions


def scalar_kernel(dk, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """κ(x, b) (B, M), the isotropic Hessian-kernel profile of a
    :class:`~forcefield.kernel.kernel.DescriptorKernel` ``dk`` summed over the permuted copies of each training
    point b, and the flat index b·P + p (B,) of the copy most similar to each query descriptor x (B, D)."""
    M, P = len(dk.dp) // dk.q.shape[0], dk.q.shape[0]
    out = torch.empty(len(x), M, dtype=x.dtype, device=x.device)
    best = torch.empty(len(x), dtype=torch.long, device=x.device)
    for s in range(0, len(x), dk.block_size):
        xb = x[s:s + dk.block_size]
        base, r = dk._profile(xb, (xb * xb).sum(1))
        prof = base.mul_(r.add_(dk.sigma))  # (b, M P), decreasing in the distance
        best[s:s + len(xb)] = prof.argmax(1)
        out[s:s + len(xb)] = prof.view(len(xb), M, P).sum(-1)
    return out, best


class SeparablePosterior:
    """Separable approximation of the force posterior variance of a fitted kernel force field.

    Parameters
    ----------
    ff : the fitted :class:`~forcefield.kernel.model.KernelForceField`.
    jitter : relative diagonal added to K_κ (grown tenfold until its Cholesky factorisation succeeds).
    """

    exact = False
    method = "separable"

    def __init__(self, ff, jitter: float = 1e-10) -> None:
        ff._check_fitted()
        t0 = time.perf_counter()
        self.ff = ff
        self.sigma = float(ff.sigma_)
        self.perms = torch.as_tensor(np.asarray(ff.perms), device=ff.device)
        self.M = len(ff._d)
        self.P = ff._dk.q.shape[0]
        n = ff.n_atoms
        K = scalar_kernel(ff._dk, ff._d)[0]
        K = 0.5 * (K + K.T)
        scale = float(K.diagonal().mean())
        eye = torch.eye(self.M, dtype=K.dtype, device=K.device)
        jit = max(float(jitter), float(ff.lam)) * scale
        for _ in range(8):
            L, info = torch.linalg.cholesky_ex(K + jit * eye)
            if not int(info):
                break
            jit *= 10.0
        else:
            raise InputError("the separable posterior could not factorise the training kernel matrix "
                             "(duplicate training frames?)")
        self.L = L
        self.jitter = jit / scale
        self.rank = self.M
        self.n_eff = self.M * max(1, 3 * n - (5 if n == 2 else 6))
        self.amplitude2 = ml_amplitude2(ff, self.n_eff)
        R = training_positions(ff)
        prior = torch.cat([prior_diagonal(R[i:i + 256], self.perms, self.sigma) for i in range(0, self.M, 256)])
        self.prior_atom = prior.view(self.M, n, 3).sum(-1) / 3.0  # (M, N): mean over x, y, z
        self.build_seconds = time.perf_counter() - t0

    def _kappa_self(self, x: torch.Tensor) -> torch.Tensor:
        """κ(x, x) (B,)."""
        rr = SQRT5 * torch.linalg.vector_norm(x[:, None] - x[:, self.ff._dk.q], dim=-1)  # (B, P)
        base = torch.exp(-rr / self.sigma) * (5.0 / (3.0 * self.sigma ** 3))
        return (base * (rr + self.sigma)).sum(1)

    def shrink(self, R: torch.Tensor) -> torch.Tensor:
        """The shrink factor v(x) (B,) ∈ [0, 1] of geometries R (B, N, 3) Å."""
        d = descriptor(R.to(self.ff.device, torch.float64))[0]
        return self._shrink(d)[0]

    def _shrink(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, best = scalar_kernel(self.ff._dk, d)
        Z = torch.linalg.solve_triangular(self.L, k.T, upper=False)
        return (1.0 - (Z * Z).sum(0) / self._kappa_self(d)).clamp_(0.0, 1.0), best

    def variance(self, R: torch.Tensor, batch: int = 1024, neighbours: int | None = None) -> torch.Tensor:
        """Normalised force variances (B, N, 3) at geometries R (B, N, 3) Å: v(x) x the nearest training
        frame's prior variance per atom, the same for x, y and z.

        ``neighbours`` is accepted for the interface of :class:`ForcePosterior` and ignored.
        Multiply by std² s² for (kcal/mol/Å)² (see :func:`~forcefield.kernel.uncertainty.force_std`).
        """
        R = R.to(self.ff.device, torch.float64)
        out = torch.empty(R.shape, dtype=torch.float64, device=R.device)
        for s in range(0, len(R), batch):
            d = descriptor(R[s:s + batch])[0]
            v, best = self._shrink(d)
            b, p = best // self.P, best % self.P
            prior = self.prior_atom[b[:, None], self.perms[p]]  # atom a of x is atom π_p(a) of copy p of b
            out[s:s + len(d)] = (prior * v[:, None])[..., None].expand(-1, -1, 3)
        return out
