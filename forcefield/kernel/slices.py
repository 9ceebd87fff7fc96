"""Matrix-free slices K[rows, cols] of the Hessian kernel (used by the Schur preconditioner), float64."""
from __future__ import annotations

import numpy as np
import torch

from .descriptor import jacobian_apply, jacobian_t_apply
from .kernel import DescriptorKernel, HessianKernel
from .trainset import PairJacobian


class KernelSlice:
    """The block K[rows, cols] of a :class:`HessianKernel` as a matrix-free operator.

    The kernel profile between the two point sets (``len(rows) x len(cols) * P`` numbers) is computed once;
    each application then costs three products of that size with the descriptor dimension, so a slice with
    a few columns (e.g. the inducing points of a preconditioner) is much cheaper than a full matvec.
    Vectors are point-major: ``(len(cols), width)`` in, ``(len(rows), width)`` out, where a point's row
    holds its 3N Cartesian unknowns then (energy constraints) its energy unknown.
    """

    def __init__(self, kernel: HessianKernel, rows, cols) -> None:
        tr = kernel.train
        dev = tr.d.device
        self.kernel = kernel
        self.rows = torch.as_tensor(np.asarray(rows), device=dev).reshape(-1)
        self.cols = torch.as_tensor(np.asarray(cols), device=dev).reshape(-1)
        self.dk = DescriptorKernel(tr.d[self.cols], tr.q, kernel.sigma)
        self.xr = tr.d[self.rows]
        self._jr = (tr.diff[self.rows], tr.d3[self.rows])
        self._jc = (tr.diff[self.cols], tr.d3[self.cols])
        # small molecules: the Jacobians as incidence GEMMs, as in the full product (2-6x faster than the
        # gather/scatter forms; on Ac-Ala3-NHMe at M = 1,000 they were most of a preconditioner application)
        small = getattr(kernel, "_pj_gemm", None) is not None
        self._pjr = PairJacobian(*self._jr) if small else None
        self._pjc = PairJacobian(*self._jc) if small else None
        base, r = self.dk._profile(self.xr, (self.xr * self.xr).sum(1))
        self.A = base * (r + kernel.sigma)
        self.kv = self.dk.kernel_value(base, r) if kernel.energy else None
        self.c5 = base.mul_(5.0 / kernel.sigma)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """K[rows, cols] v for v (len(cols), width); returns (len(rows), width)."""
        k = self.kernel
        n3, nc = k.n3, len(self.cols)
        vc = v[:, :n3].reshape(nc, -1, 3)
        w = self._pjc.apply(vc) if self._pjc is not None else jacobian_apply(vc, *self._jc)
        wp, t = self.dk.prepare(w)
        sdot = self.xr @ wp.T - t[None, :]
        c = sdot * self.c5
        csum = c.sum(1, keepdim=True)
        if k.energy:
            ap, apd = self.dk.energy_weights(v[:, n3])
            Te = (self.A * sdot).sum(1) + self.kv @ ap
            csum += (self.A @ ap)[:, None]
            wp = wp + apd
        y = self.A @ wp - csum * self.xr + c @ self.dk.dp
        out = self._pjr.apply_t(y) if self._pjr is not None else jacobian_t_apply(y, *self._jr)
        out = out.reshape(len(self.rows), n3)
        return torch.cat([out, Te[:, None]], 1) if k.energy else out

