"""The symmetrised Matérn-5/2 Hessian kernel of the force field, applied block by block in torch (float64).

Notation (descriptor space, D = N(N-1)/2 inverse distances): for descriptors d, d' let u = d - d',
r = sqrt(5)|u|, e = exp(-r/σ), ``base = 5 e / (3 σ^3)``. The Matérn ν=5/2 kernel
k = (1 + r/σ + r²/(3σ²)) e has

* ∇_{d'} k = base (σ + r) u,
* ∇_d ∇_{d'}^T k = base [(σ + r) I - (5/σ) u u^T]   (=: M(d, d'), positive semi-definite).

The force-field kernel between geometries x_a, x_b is the Cartesian Hessian
``K_ab = Σ_p J_a^T M(d_a, P_p d_b) J_b^{(p)}`` summed over the permutational symmetries P_p, with J the
descriptor Jacobian. With coefficients β solving (K + λ I) β = F / std and descriptor-space weights
w_b = J_b β_b, the model is

    T(x) = Σ_{b,p} base (σ + r) (u · w_b^p),     F(x) = std ∇_x T(x),     E(x) = c - std T(x),

so forces are exactly minus the gradient of the energy. Nothing here stores the 3NM x 3NM matrix unless
asked for one block (:meth:`HessianKernel.block`).

Energy constraints (sGDML's ``use_E_cstr``): T is a Gaussian process with covariance k, and the training
energies enter as observations of T itself. Then one more coefficient α_b per training point adds
``Σ_{b,p} α_b k(d(x), P_p d_b)`` to T (its descriptor gradient is ``-α_b base (σ + r) u``), and the linear
system gains the blocks cov(∇T_a, T_b) = -J_aᵀ Σ_p base (σ + r) u, cov(T_a, ∇T_b) (its transpose) and
cov(T_a, T_b) = Σ_p k. Unknowns are ordered [β (3NM), α (M)] as in sGDML; targets
[F / std, (mean(E) - E) / std].
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .descriptor import descriptor, jacobian_apply, jacobian_t_apply
from .trainset import PairJacobian, TrainingSet, dense_jacobian  # noqa: F401  (re-exported)

SQRT5 = math.sqrt(5.0)
GUARD = 1e-6  # squared distances below GUARD * (|x|² + |y|²) are recomputed from the explicit differences


def sq_distances(x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor | None = None,
                 y_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distances (a, b) between rows of x (a, D) and y (b, D) as one GEMM, |x|² + |y|² - 2 x·y.

    The expansion loses digits where the distance is small against the norms (cancellation): those
    entries (below ``GUARD`` (|x|² + |y|²); near-duplicate geometries, every training point against
    itself) are recomputed from the explicit differences, so every entry is accurate to a few ulps of the
    norms or better (GEMM accumulation error ~ D ε |x||y|).
    """
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    y_sq = (y * y).sum(1) if y_sq is None else y_sq
    r2 = torch.addmm(y_sq[None, :], x, y.T, alpha=-2.0).add_(x_sq[:, None])
    small = r2 < GUARD * (x_sq[:, None] + y_sq[None, :])
    idx = torch.nonzero(small)
    if len(idx):
        i, j = idx[:, 0], idx[:, 1]
        diff = x[i] - y[j]
        r2[i, j] = (diff * diff).sum(1)
    return r2.clamp_min_(0.0)


#: most atoms for incidence-GEMM Jacobians (GEMM ~ N·D, scatter ~ D); J v + Jᵀ g, 2 threads: 42 atoms 0.008 vs
#: 0.032 s (M = 1,000), 56 atoms 0.006 vs 0.019 s, 142 atoms 0.23 vs 0.51 s (M = 600)
PAIR_GEMM_MAX_ATOMS = 160


class DescriptorKernel:
    """The descriptor-space part of the model: evaluates T(x) and ∇_d T against training descriptors.

    Parameters
    ----------
    d : (M, D) training descriptors. q : (P, D) descriptor permutations. sigma : length scale σ (1/Å).
    block_size : query rows per block; one block needs about 6 * block_size * M * P * 8 bytes.
    """

    def __init__(self, d: torch.Tensor, q: torch.Tensor, sigma: float, block_size: int | None = None) -> None:
        self.sigma = float(sigma)
        self.q = q
        self.d = d
        # no symmetries: the permuted copies are the rows themselves (no gathers)
        self._ident = q.shape[0] == 1 and bool((q[0] == torch.arange(q.shape[1], device=q.device)).all())
        self.dp = d if self._ident else d[:, q].reshape(-1, d.shape[1])  # (MP, D)
        self.dp_sq = (self.dp * self.dp).sum(1)  # (MP,)
        mp = self.dp.shape[0]
        self.block_size = block_size or max(8, min(1024, int(2e6 // max(mp, 1))))

    def permuted(self, x: torch.Tensor) -> torch.Tensor:
        """(M, D) rows -> (M * P, D) rows of every permuted copy (training-point major)."""
        return x if self._ident else x[:, self.q].reshape(-1, x.shape[1])

    def prepare(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Permuted weights (MP, D) and products t = d_b^p · w_b^p (MP,) for descriptor weights w (M, D)."""
        wp = self.permuted(w)
        # d_b^p · w_b^p = d_b · w_b (both permuted alike): one product per training point
        return wp, (self.d * w).sum(1).repeat_interleave(self.q.shape[0])

    def _profile(self, x: torch.Tensor, x_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """base and r (b, MP) for query descriptors x (b, D)."""
        r = sq_distances(x, self.dp, x_sq, self.dp_sq).sqrt_().mul_(SQRT5)
        base = torch.exp(-r / self.sigma).mul_(5.0 / (3.0 * self.sigma ** 3))
        return base, r

    def energy_weights(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy coefficients α (M,) -> (αp (MP,), αp dp (MP, D)) for :meth:`contract`."""
        ap = alpha[:, None].expand(-1, self.q.shape[0]).reshape(-1)
        return ap, ap[:, None] * self.dp

    def kernel_value(self, base: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The Matérn-5/2 kernel k = (1 + r/σ + r²/(3σ²)) e from ``base`` and r (same shapes)."""
        s = self.sigma
        return base * (0.6 * s ** 3) * (1.0 + r / s + r * r / (3.0 * s * s))

    def contract(self, x: torch.Tensor, wp: torch.Tensor, t: torch.Tensor,
                 need_energy: bool = True, energy_w: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """T(x) (b,) and y(x) = ∇_d T (b, D) for query descriptors x (b, D), in blocks.

        wp : (MP, D) permuted weights; t : (MP,) the products d_b^p · w_b^p; energy_w : the energy
        coefficients as given by :meth:`energy_weights` (models trained with energy constraints).
        """
        out_y = torch.empty_like(x)
        out_T = torch.empty(x.shape[0], dtype=x.dtype, device=x.device) if need_energy else None
        wq = wp if energy_w is None else wp + energy_w[1]
        for s in range(0, x.shape[0], self.block_size):
            xb = x[s:s + self.block_size]
            base, r = self._profile(xb, (xb * xb).sum(1))
            A = base * (r + self.sigma)
            sdot = xb @ wp.T - t[None, :]
            if need_energy:
                T = (A * sdot).sum(1)
                if energy_w is not None:
                    T += self.kernel_value(base, r) @ energy_w[0]
                out_T[s:s + len(xb)] = T
            c = base.mul_(sdot).mul_(5.0 / self.sigma)
            csum = c.sum(1, keepdim=True)
            if energy_w is not None:
                csum += (A @ energy_w[0])[:, None]
            out_y[s:s + len(xb)] = A @ wq - csum * xb + c @ self.dp
        return out_T, out_y


class HessianKernel(DescriptorKernel):
    """Matérn-5/2 Hessian kernel on a training set, applied without storing the full matrix.

    Parameters
    ----------
    train : the training descriptors.
    sigma : length scale σ in descriptor units (1/Å), as in sGDML.
    block_size : query rows per block (see :class:`DescriptorKernel`).
    """

    def __init__(self, train: TrainingSet, sigma: float, block_size: int | None = None,
                 cache_bytes: float = 1e9, energy: bool = False) -> None:
        super().__init__(train.d, train.q, sigma, block_size)
        self.train = train
        self.cache_bytes = cache_bytes
        self.energy = bool(energy)
        self.n3 = 3 * train.n_atoms
        self.width = self.n3 + (1 if self.energy else 0)  # unknowns per training point
        self.n_unknowns = train.n * self.width
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # the training Jacobians as incidence GEMMs (see PairJacobian) up to PAIR_GEMM_MAX_ATOMS atoms
        self._pj_gemm = PairJacobian(train.diff, train.d3) if train.n_atoms <= PAIR_GEMM_MAX_ATOMS else None
        i, j = np.tril_indices(train.n_atoms, k=-1)
        self._pi = torch.as_tensor(i, device=train.d.device)
        self._pj = torch.as_tensor(j, device=train.d.device)
        self._ar = torch.arange(train.n_atoms, device=train.d.device)

    def weights(self, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Permuted descriptor weights (MP, D) and products t (MP,) for Cartesian coefficients β (M, N, 3)."""
        tr = self.train
        if self._pj_gemm is not None:
            return self.prepare(self._pj_gemm.apply(beta))
        return self.prepare(jacobian_apply(beta, tr.diff, tr.d3))

    # ------------------------------------------------------------------ operators
    def matvec(self, beta: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
        """(K + λ I) v for v = β (M, N, 3) or flat (3NM,); with energy constraints v = [β, α] (3NM + M,).

        Same shape out.
        """
        tr = self.train
        shape = beta.shape
        M, n3 = tr.n, self.n3
        flat = beta.reshape(-1)
        b = flat[:M * n3].reshape(M, -1, 3)
        alpha = flat[M * n3:] if self.energy else None
        wp, t = self.weights(b)
        ew = self.energy_weights(alpha) if self.energy else None
        per = 24.0 if self.energy else 16.0
        if self._cache is None and per * tr.n * self.dp.shape[0] <= self.cache_bytes:
            self._cache = []
            for s in range(0, tr.n, self.block_size):
                xb = tr.d[s:s + self.block_size]
                base, r = self._profile(xb, (xb * xb).sum(1))
                kv = self.kernel_value(base, r) if self.energy else None
                A = base * (r + self.sigma)
                self._cache.append((base.mul_(5.0 / self.sigma), A, kv))  # (5/σ) base, A, k
        Te = None
        if self._cache is not None:  # kernel profile stored (16 M² P bytes, below cache_bytes)
            y = torch.empty_like(tr.d)
            Te = torch.empty(M, dtype=y.dtype, device=y.device) if self.energy else None
            wq = wp if ew is None else wp + ew[1]
            for k, (base5, A, kv) in enumerate(self._cache):
                s = k * self.block_size
                xb = tr.d[s:s + self.block_size]
                sdot = torch.addmm(t[None, :], xb, wp.T, alpha=1.0, beta=-1.0)  # xb wpᵀ - t
                if self.energy:
                    Te[s:s + len(xb)] = (A * sdot).sum(1) + kv @ ew[0]
                c = sdot.mul_(base5)
                csum = c.sum(1, keepdim=True)
                if self.energy:
                    csum += (A @ ew[0])[:, None]
                yb = torch.addmm(csum * xb, A, wq, beta=-1.0)  # A wq - csum xb
                y[s:s + len(xb)] = yb.addmm_(c, self.dp)
        else:  # recomputed block by block: memory linear in M
            Te, y = self.contract(tr.d, wp, t, need_energy=self.energy, energy_w=ew)
        if self._pj_gemm is not None:
            out = self._pj_gemm.apply_t(y).reshape(-1)
        else:
            out = jacobian_t_apply(y, tr.diff, tr.d3).reshape(-1)
        if self.energy:
            out = torch.cat([out, Te])
        if lam:
            out = out + lam * flat
        return out.reshape(shape)

    # ------------------------------------------------------------------ rigid-body null space
    def rigid_basis(self) -> torch.Tensor:
        """Orthonormal bases (M, width, 6) of each training point's rigid motions (translations, rotations).

        The kernel annihilates them exactly (the descriptor is invariant), so K v = 0 for every v supported
        on one point and in its span; the energy unknown (energy constraints) has no part in them. A
        linear molecule has 5: the sixth column is then zero.
        """
        if getattr(self, "_rigid", None) is None:
            R = self.train.R
            M, N = R.shape[:2]
            x = R - R.mean(1, keepdim=True)
            B = torch.zeros(M, N, 3, 6, dtype=R.dtype, device=R.device)
            for k in range(3):
                B[:, :, k, k] = 1.0
                e = torch.zeros(3, dtype=R.dtype, device=R.device)
                e[k] = 1.0
                B[..., 3 + k] = torch.cross(e.expand_as(x), x, dim=-1)
            U, S, _ = torch.linalg.svd(B.reshape(M, 3 * N, 6), full_matrices=False)
            U = U * (S > 1e-8 * S[:, :1])[:, None, :]
            if self.energy:
                U = torch.cat([U, torch.zeros(M, 1, 6, dtype=U.dtype, device=U.device)], 1)
            self._rigid = U
        return self._rigid

    def project_rigid(self, v: torch.Tensor) -> torch.Tensor:
        """v (n_unknowns,) with each training point's rigid-motion components removed.

        They do not change the model (w = J β ignores them), but with a tiny λ they are the system's
        smallest eigen-directions, so solvers work in their orthogonal complement.
        """
        Q = self.rigid_basis()
        rows = self.point_rows(torch.arange(self.train.n, device=v.device))
        vp = v.reshape(-1)[rows]  # (M, width)
        out = v.reshape(-1).clone()
        out[rows] = vp - (Q @ (Q.transpose(1, 2) @ vp[..., None]))[..., 0]
        return out.reshape(v.shape)

    # ------------------------------------------------------------------ explicit blocks (fast path)
    def point_rows(self, idx) -> torch.Tensor:
        """Indices (len(idx), width) of the unknowns of training points idx: 3N forces (+ the energy)."""
        dev = self.train.d.device
        idx = torch.as_tensor(np.asarray(idx), device=dev).reshape(-1)
        rows = idx[:, None] * self.n3 + torch.arange(self.n3, device=dev)
        if self.energy:
            rows = torch.cat([rows, (self.train.n * self.n3 + idx)[:, None]], 1)
        return rows

    def _jt(self, Y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """J_aᵀ Y: descriptor-space columns Y (na, D, X) of training points a -> (na, 3N, X)."""
        tr = self.train
        # batched products with the dense Jacobians: more flops than scattering the sparse pairs, but
        # compute-bound (the scatter's (na, D, 3, X) temporaries made it ~5x slower)
        return torch.bmm(dense_jacobian(tr.diff[a], tr.d3[a]).transpose(1, 2), Y)

    def _cross(self, a: torch.Tensor, b: torch.Tensor, paired: bool = False, Wb: tuple | None = None):
        """Kernel blocks between training points a (rows) and b (columns).

        Uses dense Jacobians of the column points: the permuted copy p of point b has descriptor
        d_b[q_p] and Jacobian J_b[q_p], so its descriptor response to a unit Cartesian vector is
        y = Σ_p A W_p - (5/σ) base u (uᵀ W_p) with W_p = J_b[q_p], u = d_a - d_b[q_p]; rows then get J_aᵀ.

        Returns Kff (na, 3N, nb, 3N), Kfe (na, 3N, nb), Kef (na, nb, 3N), Kee (na, nb) (the energy
        blocks None without energy constraints); with ``paired`` (a and b of equal length) the nb axis
        is dropped and block k couples a[k] with b[k]. ``Wb``: :meth:`_col_data` of b, if already at hand.
        """
        if not paired:
            return self._cross_full(a, b, Wb)
        tr, sig = self.train, self.sigma
        xa = tr.d[a]
        W, dpb = Wb if Wb is not None else self._col_data(b)
        u = xa[:, None] - dpb if paired else xa[:, None, None] - dpb[None]  # (na, [nb,] P, D)
        r = SQRT5 * torch.linalg.vector_norm(u, dim=-1)
        base = torch.exp(-r / sig) * (5.0 / (3.0 * sig ** 3))
        A = base * (r + sig)
        c5u = (base * (5.0 / sig))[..., None] * u
        if paired:
            s = torch.einsum("apd,apdk->apk", u, W)
            Y = torch.einsum("ap,apdk->adk", A, W) - torch.einsum("apd,apk->adk", c5u, s)
            Kff = self._jt(Y, a)
        else:
            s = torch.einsum("abpd,bpdk->abpk", u, W)
            Y = torch.einsum("abp,bpdk->abdk", A, W) - torch.einsum("abpd,abpk->abdk", c5u, s)
            na, nb = Y.shape[:2]
            Kff = self._jt(Y.permute(0, 2, 1, 3).reshape(na, Y.shape[2], -1), a).reshape(na, self.n3, nb, -1)
        if not self.energy:
            return Kff, None, None, None
        if paired:
            Kfe = self._jt(-(A[..., None] * u).sum(1)[..., None], a)[..., 0]  # (n, 3N)
            Kef = torch.einsum("ap,apk->ak", A, s)
            Kee = self.kernel_value(base, r).sum(-1)
        else:
            Kfe = self._jt(-(A[..., None] * u).sum(2).transpose(1, 2), a)  # (na, 3N, nb)
            Kef = torch.einsum("abp,abpk->abk", A, s)
            Kee = self.kernel_value(base, r).sum(-1)
        return Kff, Kfe, Kef, Kee

    def _cross_full(self, a: torch.Tensor, b: torch.Tensor, Wb: tuple | None = None):
        """:meth:`_cross` for all pairs of a and b, written so that every step is one large product.

        With u = x_a - d~ (d~ = d_b[q_p]), s = uᵀ W_p and e = (5/σ) base s, the descriptor response
        Y = Σ_p A W_p - (5/σ) base u s expands to Σ_p A W_p - x_a (Σ_p e) + Σ_p d~ e, so
        J_aᵀ Y = J_aᵀ (Σ_p A W_p) - (J_aᵀ x_a)(Σ_p e) + Σ_p (J_aᵀ d~) e: one batched product with the
        dense Jacobians per column point, and rank-P corrections.
        """
        tr, sig, n3 = self.train, self.sigma, self.n3
        xa = tr.d[a]
        W, dpb = Wb if Wb is not None else self._col_data(b)
        na, nb = len(a), len(b)
        P, D = dpb.shape[1], dpb.shape[2]
        dflat = dpb.reshape(nb * P, D)
        r = sq_distances(xa, dflat).sqrt_().mul_(SQRT5).reshape(na, nb, P)
        base = torch.exp(-r / sig) * (5.0 / (3.0 * sig ** 3))
        A = base * (r + sig)
        tW = torch.einsum("bpd,bpdk->bpk", dpb, W)  # (nb, P, 3N)
        s = (xa @ W.permute(2, 0, 1, 3).reshape(D, -1)).reshape(na, nb, P, n3) - tW[None]
        e = (base * (5.0 / sig))[..., None] * s
        E1 = e.sum(2)  # (na, nb, 3N)
        JaT = dense_jacobian(tr.diff[a], tr.d3[a], transposed=True)  # (na, 3N, D)
        jx = jacobian_t_apply(xa, tr.diff[a], tr.d3[a]).reshape(na, n3)  # J_aᵀ x_a
        V = (JaT.reshape(na * n3, D) @ dflat.T).reshape(na, n3, nb, P)  # J_aᵀ d~
        Kff = torch.empty(na, n3, nb, n3, dtype=xa.dtype, device=xa.device)
        for j in range(nb):
            Z1 = (A[:, j] @ W[j].reshape(P, D * n3)).reshape(na, D, n3)
            Kj = torch.bmm(JaT, Z1)
            Kj -= jx[:, :, None] * E1[:, j, None, :]
            Kj += torch.bmm(V[:, :, j], e[:, j])
            Kff[:, :, j] = Kj
        if not self.energy:
            return Kff, None, None, None
        Kfe = -A.sum(2)[:, None] * jx[:, :, None] + torch.einsum("abp,anbp->anb", A, V)  # (na, 3N, nb)
        Kef = torch.einsum("abp,abpk->abk", A, s)
        Kee = self.kernel_value(base, r).sum(-1)
        return Kff, Kfe, Kef, Kee

    def _col_data(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Permuted dense Jacobians (nb, P, D, 3N) and descriptors (nb, P, D) of column points b."""
        tr, q = self.train, self.q
        return dense_jacobian(tr.diff[b], tr.d3[b])[:, q], tr.d[b][:, q]

    def _chunk(self, nb: int) -> int:
        """Row points per :meth:`_cross` call for nb column points (temporaries of ~100 MB)."""
        P, D = self.q.shape
        return max(1, int(1.2e7 // max(1, 3 * D * self.n3 + nb * P * (D + 3 * self.n3))))

    def columns(self, j) -> torch.Tensor:
        """The kernel columns of training point(s) j over all unknowns: (n_unknowns, len(j) * width).

        Columns are point-major: the 3N force columns of each point, then (energy constraints) its energy.
        """
        tr = self.train
        M, n3, w = tr.n, self.n3, self.width
        dev = tr.d.device
        b = torch.as_tensor(np.atleast_1d(np.asarray(j)), device=dev).reshape(-1)
        nb = len(b)
        out = torch.empty(self.n_unknowns, nb, w, dtype=tr.d.dtype, device=dev)
        step = self._chunk(nb)
        Wb = self._col_data(b)
        for s in range(0, M, step):
            a = torch.arange(s, min(M, s + step), device=dev)
            Kff, Kfe, Kef, Kee = self._cross(a, b, Wb=Wb)
            out[s * n3:(s + len(a)) * n3, :, :n3] = Kff.reshape(-1, nb, n3)
            if self.energy:
                out[s * n3:(s + len(a)) * n3, :, n3] = Kfe.reshape(-1, nb)
                out[M * n3 + s:M * n3 + s + len(a), :, :n3] = Kef
                out[M * n3 + s:M * n3 + s + len(a), :, n3] = Kee
        return out.reshape(self.n_unknowns, nb * w)

    def diag_blocks(self, idx=None) -> torch.Tensor:
        """The diagonal blocks (m, width, width) of training points idx (all by default)."""
        tr = self.train
        dev = tr.d.device
        idx = torch.arange(tr.n, device=dev) if idx is None else torch.as_tensor(np.asarray(idx), device=dev)
        n3 = self.n3
        out = torch.empty(len(idx), self.width, self.width, dtype=tr.d.dtype, device=dev)
        step = self._chunk(1)
        for s in range(0, len(idx), step):
            a = idx[s:s + step]
            Kff, Kfe, Kef, Kee = self._cross(a, a, paired=True)
            out[s:s + len(a), :n3, :n3] = Kff
            if self.energy:
                out[s:s + len(a), :n3, n3] = Kfe
                out[s:s + len(a), n3, :n3] = Kef
                out[s:s + len(a), n3, n3] = Kee
        return out

    def dense(self, rows=None, cols=None) -> torch.Tensor:
        """The explicit kernel matrix between training points rows and cols (all by default).

        Unknowns ordered as in the solve: the 3N forces of each point (point-major), then (with energy
        constraints) the energies of the points; shape (len(rows) * width, len(cols) * width).
        """
        tr = self.train
        dev = tr.d.device
        rows = torch.arange(tr.n, device=dev) if rows is None else torch.as_tensor(np.asarray(rows), device=dev)
        cols = torch.arange(tr.n, device=dev) if cols is None else torch.as_tensor(np.asarray(cols), device=dev)
        na, nb, n3 = len(rows), len(cols), self.n3
        out = torch.empty(na * self.width, nb * self.width, dtype=tr.d.dtype, device=dev)
        step = self._chunk(nb)
        Wb = self._col_data(cols)
        for s in range(0, na, step):
            a = rows[s:s + step]
            e = s + len(a)
            Kff, Kfe, Kef, Kee = self._cross(a, cols, Wb=Wb)
            out[s * n3:e * n3, :nb * n3] = Kff.reshape(len(a) * n3, nb * n3)
            if self.energy:
                out[s * n3:e * n3, nb * n3:] = Kfe.reshape(len(a) * n3, nb)
                out[na * n3 + s:na * n3 + e, :nb * n3] = Kef.reshape(len(a), nb * n3)
                out[na * n3 + s:na * n3 + e, nb * n3:] = Kee
        return out

    def block(self, rows: torch.Tensor | np.ndarray, cols: torch.Tensor | np.ndarray,
              paired: bool = False) -> torch.Tensor:
        """Explicit kernel block K[rows, cols] of shape (len(rows)*3N, len(cols)*3N) for training indices.

        With ``paired=True`` (rows and cols of equal length) only the blocks K[rows[k], cols[k]] are
        computed, as an array (len(rows), 3N, 3N) (e.g. the diagonal blocks).

        Uses the sparsity of the inverse-distance Jacobian (each pair touches two atoms): for the permuted
        copy x~ = x_b[perm] the block is A J_aᵀJ~ - (5/σ) base (J_aᵀu)(J~ᵀu)ᵀ, where J_aᵀJ~ needs only
        per-pair 3x3 outer products; its columns are then moved back to the atoms of x_b.
        """
        tr = self.train
        dev, dt = tr.d.device, tr.d.dtype
        rows = torch.as_tensor(np.asarray(rows), device=dev).reshape(-1)
        cols = torch.as_tensor(np.asarray(cols), device=dev).reshape(-1)
        N = tr.n_atoms
        na, nb, P = len(rows), len(cols), tr.q.shape[0]
        Rt = tr.R[cols][:, tr.perms]  # (b, P, N, 3) permuted copies
        dt_, difft, d3t = descriptor(Rt.reshape(nb * P, N, 3))
        ct = (-d3t[..., None] * difft).reshape(nb, P, -1, 3)  # (b, P, D, 3)
        dt_ = dt_.reshape(nb, P, -1)
        pi, pj = self._pi, self._pj
        if paired and na != nb:
            raise ValueError("paired blocks need as many rows as columns")
        out = torch.empty(na, N, 3, 1 if paired else nb, N, 3, dtype=dt, device=dev)
        step = max(1, int(3000 // max(1, (1 if paired else nb) * P)))
        for s in range(0, na, step):
            ra = rows[s:s + step]
            ca = len(ra)
            xa = tr.d[ra]
            c_a = -tr.d3[ra][..., None] * tr.diff[ra]  # (a, D, 3)
            dB = dt_[s:s + ca, None] if paired else dt_[None]
            cB = ct[s:s + ca, None] if paired else ct[None]
            nbb = 1 if paired else nb
            u = xa[:, None, None, :] - dB  # (a, b, P, D)
            r = SQRT5 * torch.linalg.vector_norm(u, dim=-1)
            base = torch.exp(-r / self.sigma) * (5.0 / (3.0 * self.sigma ** 3))
            A = base * (r + self.sigma)
            # Jᵀu for both sides: (a, b, P, N, 3)
            wa = u[..., None] * c_a[:, None, None]
            ja = torch.zeros(ca, nbb, P, N, 3, dtype=dt, device=dev)
            ja.index_add_(3, pi, wa).index_add_(3, pj, -wa)
            wb = u[..., None] * cB
            jb = torch.zeros(ca, nbb, P, N, 3, dtype=dt, device=dev)
            jb.index_add_(3, pi, wb).index_add_(3, pj, -wb)
            del wa, wb, u
            blk = torch.zeros(ca, N, 3, nbb, N, 3, dtype=dt, device=dev)
            for p in range(P):
                w = A[:, :, p, None, None, None] * c_a[:, None, :, :, None] * cB[:, :, p, :, None, :]
                G = torch.zeros(ca, nbb, N, N, 3, 3, dtype=dt, device=dev)
                G[:, :, pi, pj] = -w
                G[:, :, pj, pi] = -w
                dg = torch.zeros(ca, nbb, N, 3, 3, dtype=dt, device=dev)
                dg.index_add_(2, pi, w).index_add_(2, pj, w)
                G[:, :, self._ar, self._ar] = dg
                G = G.permute(0, 2, 4, 1, 3, 5)  # (a, N, 3, b, N, 3)
                f = base[:, :, p] * (5.0 / self.sigma)
                G = G - torch.einsum("ab,abnx,abmy->anxbmy", f, ja[:, :, p], jb[:, :, p])
                blk[:, :, :, :, tr.perms[p]] += G
            out[s:s + ca] = blk
        n3 = 3 * N
        if paired:
            return out.reshape(na, n3, n3)
        return out.reshape(na * n3, nb * n3)
