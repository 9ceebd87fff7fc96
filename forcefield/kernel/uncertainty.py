"""Posterior uncertainty of the kernel force field's forces (its Gaussian-process view), float64 torch.

The model is the posterior mean of a Gaussian process on T (E = c - std T) with covariance s² k_sym,
k_sym(x, x') = Σ_p k(d(x), P_p d(x')) the symmetrised Matérn-5/2 kernel, observed through the force
components of the training frames with noise λ. The force posterior covariance at a geometry x is

    Cov[F(x)] = std² s² (K_xx - K_xX (K + λ I)⁻¹ K_Xx),

with K the force-field (Hessian) kernel (:mod:`forcefield.kernel.kernel`). Cross covariances with a training
frame along a Cartesian direction v are predictions of a one-point model with weights w = J v, so they
reuse the model's descriptor-space algebra.

Exact and low-rank forms share one construction: a block-pivoted Cholesky factorisation of K + λ I over
directions of training frames (the frame with the largest residual variance first, its leading residual
eigen-directions taken, the rigid motions that K annihilates left out). Taking every direction gives the
exact posterior; stopping at rank r gives the Nyström (subset-of-regressors, noise-free DTC) posterior
K_xx - k_xD (K_DD + λ)⁻¹ k_Dx over the r chosen directions, an upper bound of the exact variance.
Evaluating it costs r response columns and an r x r triangular solve per geometry.

Scale s²: by default the maximum-likelihood amplitude of the GP from the training data,
s² = yᵀ (K + λ I)⁻¹ y / n with y = F / std and n the number of non-rigid force components, computed from the
stored model (yᵀ(K+λ)⁻¹y = βᵀ(K+λ)β = Σ_b w_b · ∇_d T(x_b)). :func:`calibrate_std` replaces it by a factor
fitted on held-out frames (RMS error = RMS predicted std). Energy-constraint models: the training energies
are left out of the posterior (the std is then slightly larger than the full posterior's).

Units: std in kcal/mol/Å, per atom the RMS over its three Cartesian components.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import InputError
from .descriptor import descriptor, jacobian_apply
from .kernel import HessianKernel, TrainingSet, dense_jacobian

SQRT5 = math.sqrt(5.0)


def positions_from_descriptors(d: np.ndarray) -> np.ndarray:
    """Geometries (M, N, 3) with the given inverse-distance descriptors (M, D), by classical MDS.

    Used for models imported without training positions (sGDML files): the posterior variance is invariant
    to rotating or mirroring each training frame, so any embedding with the right distances will do.
    """
    d = np.asarray(d, dtype=float)
    D = d.shape[1]
    n = int(round((1 + math.sqrt(1 + 8 * D)) / 2))
    i, j = np.tril_indices(n, k=-1)
    out = np.empty((len(d), n, 3))
    C = np.eye(n) - 1.0 / n
    for m, row in enumerate(d):
        D2 = np.zeros((n, n))
        D2[i, j] = D2[j, i] = 1.0 / row ** 2
        G = -0.5 * C @ D2 @ C
        ev, V = np.linalg.eigh(G)
        out[m] = V[:, -3:] * np.sqrt(np.clip(ev[-3:], 0.0, None))
    return out


def training_positions(ff) -> torch.Tensor:
    """The fitted model's training geometries (M, N, 3) Å, float64 on its device: the stored ones, or for
    models imported without them (sGDML files) an embedding of the training descriptors
    (:func:`positions_from_descriptors`)."""
    R = getattr(ff, "R_train", None)
    R = np.asarray(R) if R is not None else positions_from_descriptors(ff._d.cpu().numpy())
    return torch.as_tensor(R, dtype=torch.float64, device=ff.device)


def _response(x: torch.Tensor, dp: torch.Tensor, wp: torch.Tensor, t: torch.Tensor, sigma: float
              ) -> torch.Tensor:
    """Descriptor responses y (B, r, D) of query descriptors x (B, D) to r one-point weight sets.

    Direction k is a training frame's permuted descriptors dp[k] (P, D) with permuted weights wp[k] (P, D)
    and t[k] = d·w; y is the descriptor gradient of T for a model holding only that weight set.
    """
    B, D = x.shape
    r, P, _ = dp.shape
    dpf, wpf = dp.reshape(r * P, D), wp.reshape(r * P, D)
    r2 = ((x * x).sum(1)[:, None] + (dpf * dpf).sum(1)[None] - 2.0 * (x @ dpf.T)).clamp_min_(0.0)
    rr = SQRT5 * r2.sqrt_()
    base = torch.exp(-rr / sigma).mul_(5.0 / (3.0 * sigma ** 3))
    A = (base * (rr + sigma)).view(B, r, P).transpose(0, 1)  # (r, B, P)
    sdot = x @ wpf.T - t.repeat_interleave(P)[None]
    c = base.mul_(sdot).mul_(5.0 / sigma).view(B, r, P).transpose(0, 1)  # (r, B, P)
    y = torch.bmm(A, wp) + torch.bmm(c, dp) - c.sum(-1)[..., None] * x[None]
    return y.transpose(0, 1)  # (B, r, D)


def pair_blocks(xd: torch.Tensor, xdiff: torch.Tensor, xd3: torch.Tensor, bd: torch.Tensor, bdiff: torch.Tensor,
                bd3: torch.Tensor, q: torch.Tensor, sigma: float) -> torch.Tensor:
    """Force covariance blocks K(x_k, b_k) (B, 3N, 3N) for paired geometries x_k, b_k (descriptors, pair
    vectors, cubes), summed over the permuted copies of b_k."""
    Wb = dense_jacobian(bdiff, bd3)  # (B, D, 3N): columns J_b e_i
    dp = bd[:, q]  # (B, P, D)
    Wp = Wb[:, q]  # (B, P, D, 3N)
    u = xd[:, None] - dp
    rr = SQRT5 * torch.linalg.vector_norm(u, dim=-1)
    base = torch.exp(-rr / sigma) * (5.0 / (3.0 * sigma ** 3))  # (B, P)
    A = base * (rr + sigma)
    t = torch.einsum("bd,bdi->bi", bd, Wb)  # d_b·w_i (the same for every permuted copy)
    sdot = torch.einsum("bd,bpdi->bpi", xd, Wp) - t[:, None]
    c = (base * (5.0 / sigma))[..., None] * sdot  # (B, P, 3N)
    y = torch.einsum("bp,bpdi->bid", A, Wp) + torch.einsum("bpi,bpd->bid", c, dp) - c.sum(1)[..., None] * xd[:, None]
    return torch.bmm(dense_jacobian(xdiff, xd3, transposed=True), y.transpose(1, 2))  # J_xᵀ y_i


def prior_blocks(d: torch.Tensor, diff: torch.Tensor, d3: torch.Tensor, q: torch.Tensor, sigma: float
                 ) -> torch.Tensor:
    """Prior force covariance blocks K(x, x) (B, 3N, 3N) of geometries given by their descriptors."""
    K = pair_blocks(d, diff, d3, d, diff, d3, q, sigma)
    return 0.5 * (K + K.transpose(1, 2))


def prior_diagonal(R: torch.Tensor, perms: torch.Tensor, sigma: float) -> torch.Tensor:
    """Diagonals (B, 3N) of the prior force covariance blocks K(x, x) of geometries R (B, N, 3) Å.

    perms : (P, N) atom permutations of the model. Written on N x N pair matrices: a Cartesian component
    (a, c) moves only the descriptor entries of atom a, so each term is a sum over the other atoms
    (P N² work per geometry, no D x 3N Jacobian).
    """
    B, n, _ = R.shape
    pi = torch.as_tensor(perms, device=R.device, dtype=torch.long)
    P = pi.shape[0]
    ar = torch.arange(n, device=R.device)
    inv = torch.empty_like(pi)
    inv.scatter_(1, pi, ar.expand(P, -1).contiguous())
    fixed = (pi == ar).to(R.dtype)[None, :, :, None]  # (1, P, N, 1): π(a) = a
    fp = (pi[:, :, None] * n + pi[:, None, :]).reshape(-1)  # flat (a, v) -> (π(a), π(v)): Mat(d[q])
    fi = (inv[:, :, None] * n + inv[:, None, :]).reshape(-1)
    fg = (ar[None, :, None] * n + pi[:, None, :]).reshape(-1)  # (a, v) -> (a, π(v))
    fa, fb = ar * n + inv, ar * n + pi  # (P, N): (a, π⁻¹(a)) and (a, π(a))
    out = torch.empty(B, n, 3, dtype=R.dtype, device=R.device)
    step = max(1, int(1.5e7 // (P * n * n * 3)))
    for s in range(0, B, step):
        x = R[s:s + step]
        b = len(x)
        u = x[:, :, None] - x[:, None]  # (b, N, N, 3): x_a - x_v
        r2 = (u * u).sum(-1)
        r2.diagonal(dim1=1, dim2=2).fill_(1.0)
        Dm = torch.rsqrt(r2)
        Dm.diagonal(dim1=1, dim2=2).zero_()  # inverse-distance matrix
        G = -u * (Dm ** 3)[..., None]  # G[a, v, c] = ∂(1/|x_a - x_v|)/∂x_ac
        Df, Gf = Dm.reshape(b, n * n), G.reshape(b, n * n, 3)
        Dp = Df.index_select(1, fp).view(b, P, n, n)  # Mat(d)[π][:, π]
        Dinv = Df.index_select(1, fi).view(b, P, n, n)
        rr = SQRT5 * torch.sqrt(0.5 * ((Dm[:, None] - Dp) ** 2).sum((2, 3)))  # (b, P): |d - d[q]|
        base = torch.exp(-rr / sigma) * (5.0 / (3.0 * sigma ** 3))
        A = base * (rr + sigma)
        wd = (G * Dm[..., None]).sum(2)[:, None]  # (b, 1, N, 3): w_(a,c) · d
        Gp = Gf.index_select(1, fg).view(b, P, n, n, 3)  # G[a, π(v), c]
        swap = Gf.index_select(1, fa.reshape(-1)) * Gf.index_select(1, fb.reshape(-1))
        wtw = fixed * (G[:, None] * Gp).sum(3) + swap.view(b, P, n, 3)  # w_(a,c) · (its permuted copy)
        wdp = torch.einsum("bavc,bpav->bpac", G, Dp)  # w · d[q]
        sdot = torch.einsum("bavc,bpav->bpac", G, Dinv) - wd  # d · (w permuted) - d · w
        c = (base * (5.0 / sigma))[..., None, None] * sdot
        out[s:s + b] = (A[..., None, None] * wtw + c * (wdp - wd)).sum(1)
    return out.reshape(B, 3 * n)


class ForcePosterior:
    """Force posterior covariance of a fitted :class:`~forcefield.kernel.model.KernelForceField`.

    Parameters
    ----------
    ff : the fitted model (needs its training positions, or rebuilds them from the descriptors).
    rank : directions of the pivoted factorisation; None: all of them (exact) when the model has at most
        ``exact_max`` non-rigid force components, else ``auto_rank`` of them.
    exact_max : largest problem treated exactly by default.
    per_frame : at most this many directions taken from one frame per pivoting step (None: all its
        non-rigid ones); spreading the rank over frames helps the low-rank form.
    frames_per_step : frames pivoted at once (matrix-matrix products).
    rel_tol : directions whose residual variance is below rel_tol times the largest prior variance stop the
        factorisation.
    """

    def __init__(self, ff, rank: int | None = None, exact_max: int = 4000, per_frame: int | None = None,
                 frames_per_step: int = 4, rel_tol: float = 1e-11, progress: bool = False) -> None:
        ff._check_fitted()
        t0 = time.perf_counter()
        self.ff = ff
        self.method = "posterior"
        self.sigma = float(ff.sigma_)
        self.q = ff._dk.q
        self.perms = torch.as_tensor(np.asarray(ff.perms), device=ff.device)
        self.R = training_positions(ff)
        d, diff, d3 = descriptor(self.R)
        self.d, self.diff, self.d3 = d, diff, d3
        M, n = self.R.shape[:2]
        self.n3 = 3 * n
        n_rigid = 5 if n == 2 else 6  # (a linear molecule other than a dimer keeps 6 here: conservative)
        self.n_eff = M * max(1, self.n3 - n_rigid)
        self.exact = rank is None and self.n_eff <= exact_max
        if rank is None:
            rank = self.n_eff if self.exact else auto_rank(M, n, len(self.q))
        self.rank_target = int(min(rank, self.n_eff))
        if per_frame is None:
            per_frame = self.n3 if self.exact else max(6, self.n3 // 4)
        self.per_frame = int(per_frame)
        self.lam = float(ff.lam)
        self._factorise(frames_per_step, rel_tol, progress)
        self.amplitude2 = ml_amplitude2(ff, self.n_eff)
        self.build_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ construction
    def _directions_response(self, x, dirs_frame: torch.Tensor, dirs_w: torch.Tensor) -> torch.Tensor:
        """Descriptor responses (B, r, D) of query descriptors x to directions (frame, weight)."""
        q = self.q
        dp = self.d[dirs_frame][:, q]  # (r, P, D)
        wp = dirs_w[:, q]
        t = (self.d[dirs_frame] * dirs_w).sum(1)
        return _response(x, dp, wp, t, self.sigma)

    def _columns(self, xd, xdiff, xd3, dirs_frame, dirs_w, chunk_bytes: float = 2e8) -> torch.Tensor:
        """Force cross covariances (B, r, 3N) between geometries (descriptors xd...) and directions."""
        B, D = xd.shape
        r = len(dirs_frame)
        out = torch.empty(B, r, self.n3, dtype=xd.dtype, device=xd.device)
        step = max(1, int(chunk_bytes // max(1, 8 * (r + self.n3) * D * 2)))
        for s in range(0, B, step):
            e = min(B, s + step)
            y = self._directions_response(xd[s:e], dirs_frame, dirs_w)  # (b, r, D)
            JT = dense_jacobian(xdiff[s:e], xd3[s:e], transposed=True)  # (b, 3N, D): one batched product
            out[s:e] = torch.bmm(y, JT.transpose(1, 2))
        return out

    def _factorise(self, frames_per_step: int, rel_tol: float, progress: bool) -> None:
        from tqdm.auto import tqdm

        M, n3, dev, dt = len(self.R), self.n3, self.R.device, torch.float64
        kern = HessianKernel(TrainingSet.from_positions(self.R, self.ff.perms), self.sigma)
        Q = kern.rigid_basis()  # (M, 3N, 6)
        Prj = torch.eye(n3, dtype=dt, device=dev) - Q @ Q.transpose(1, 2)
        resid = prior_blocks(self.d, self.diff, self.d3, self.q, self.sigma)
        resid = Prj @ (resid + self.lam * torch.eye(n3, dtype=dt, device=dev)) @ Prj
        floor = max(self.lam, rel_tol * float(resid.diagonal(dim1=1, dim2=2).max()))
        L = torch.zeros(M * n3, 0, dtype=dt, device=dev)
        frames: list[torch.Tensor] = []
        vecs: list[torch.Tensor] = []
        crows: list[torch.Tensor] = []
        r = 0
        bar = tqdm(total=self.rank_target, desc="uncertainty factor", disable=not progress, mininterval=1.0)
        while r < self.rank_target:
            tr = resid.diagonal(dim1=1, dim2=2).sum(1)
            js = torch.topk(tr, min(frames_per_step, M)).indices
            js = js[tr[js] > floor]
            if not len(js):
                break
            step = self._step(L, resid, js, floor, self.rank_target - r)
            if step is None and len(js) > 1:  # near-duplicate frames in one block: one frame at a time
                step = self._step(L, resid, js[:1], floor, self.rank_target - r)
            if step is None:
                resid[js[:1]] = 0.0
                continue
            f, v, Lnew, crow = step
            crows.append(crow)
            L = torch.cat([L, Lnew], 1)
            Lb = Lnew.view(M, n3, -1)
            resid -= Lb @ Lb.transpose(1, 2)
            frames.append(f)
            vecs.append(v)
            r += len(f)
            bar.update(len(f))
        bar.close()
        if r == 0:
            raise InputError("the kernel force field has no non-rigid training directions for its uncertainty")
        Cfull = torch.zeros(r, r, dtype=dt, device=dev)
        k = 0
        for cr in crows:
            Cfull[k:k + cr.shape[0], :k + cr.shape[0]] = cr
            k += cr.shape[0]
        self.C = Cfull
        self.dir_frame = torch.cat(frames)
        self.dir_vec = torch.cat(vecs)
        self.dir_w = jacobian_apply(self.dir_vec.reshape(r, -1, 3), self.diff[self.dir_frame],
                                    self.d3[self.dir_frame])
        self.rank = r
        self.residual_trace = float(resid.diagonal(dim1=1, dim2=2).sum())
        # kept for the local correction of the low-rank form (the nearest training frames, exactly)
        self.L = L.view(M, n3, r)
        self.resid, self.Q = resid, Q
        self.floor = floor

    def _step(self, L: torch.Tensor, resid: torch.Tensor, js: torch.Tensor, floor: float, room: int):
        """One block of the pivoted Cholesky: the leading residual directions of frames js.

        Returns (frames (k,), directions (k, 3N), new columns (M 3N, k), new rows of D^T L (k, r + k)), or
        None when the block's residual matrix is not numerically positive definite.
        """
        M, n3, dev = len(self.R), self.n3, self.R.device
        ev, V = torch.linalg.eigh(resid[js])  # ascending
        new_f, new_v = [], []
        for a, j in enumerate(js.tolist()):
            keep = torch.nonzero(ev[a] > floor)[:, 0].flip(0)[:self.per_frame]
            new_f += [j] * len(keep)
            new_v += [V[a, :, k] for k in keep.tolist()]
        new_v, new_f = new_v[:room], new_f[:room]
        if not new_v:
            return None
        f = torch.as_tensor(new_f, device=dev)
        v = torch.stack(new_v)  # (k, 3N)
        k = len(f)
        w = jacobian_apply(v.reshape(k, -1, 3), self.diff[f], self.d3[f])
        cols = self._columns(self.d, self.diff, self.d3, f, w).transpose(1, 2).reshape(M * n3, k)
        rows = (f[:, None] * n3 + torch.arange(n3, device=dev)).reshape(-1)
        cols[rows.view(k, n3), torch.arange(k, device=dev)[:, None]] += self.lam * v  # (K + λ)[:, D_new]
        old = torch.einsum("ki,kir->kr", v, L[rows].view(k, n3, -1))  # rows of L at the new directions
        cols -= L @ old.T
        S = torch.einsum("ki,kil->kl", v, cols[rows].view(k, n3, -1))
        C, info = torch.linalg.cholesky_ex(0.5 * (S + S.T))
        if int(info):
            return None
        Lnew = torch.linalg.solve_triangular(C, cols.T, upper=False).T  # cols C⁻ᵀ
        return f, v, Lnew, torch.cat([old, C], 1)

    # ------------------------------------------------------------------ evaluation
    def _nearest(self, xd: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (B, k) of the training frames nearest to descriptors xd in descriptor space (any copy)."""
        dp = self.ff._dk.dp
        d2 = (xd * xd).sum(1)[:, None] + self.ff._dk.dp_sq[None] - 2.0 * (xd @ dp.T)
        d2 = d2.view(len(xd), len(self.R), -1).amin(-1)
        return torch.topk(d2, k, dim=1, largest=False).indices

    def variance(self, R: torch.Tensor, batch: int = 64, neighbours: int | None = None) -> torch.Tensor:
        """Normalised posterior variances (B, N, 3) of the force components at geometries R (B, N, 3) Å.

        Low-rank form: conditioned on the factor's directions and, with ``neighbours`` > 0 (default 0: the
        plain Nyström form), exactly on every force component of the training frames nearest to each geometry.
        Both are subsets of the training data, so the variance stays an upper bound of the exact one.
        Multiply by std² s² for (kcal/mol/Å)² (see :func:`force_std`).
        """
        R = R.to(self.R.device, torch.float64)
        out = torch.empty(R.shape, dtype=torch.float64, device=R.device)
        nn = 0 if neighbours is None or self.exact else int(neighbours)
        nn = min(nn, len(self.R))
        n3 = self.n3
        for s in range(0, len(R), batch):
            xd, xdiff, xd3 = descriptor(R[s:s + batch])
            b = len(xd)
            prior = prior_diagonal(R[s:s + batch], self.perms, self.sigma)  # (b, 3N)
            k = self._columns(xd, xdiff, xd3, self.dir_frame, self.dir_w)  # (b, r, 3N)
            Z = torch.linalg.solve_triangular(self.C, k.transpose(0, 1).reshape(self.rank, b * n3), upper=False)
            red = (Z * Z).sum(0).view(b, n3)
            if nn:
                red = red + self._local(xd, xdiff, xd3, Z.view(self.rank, b, n3).transpose(0, 1), nn)
            out[s:s + b] = (prior - red).clamp_min_(0.0).view(b, -1, 3)
        return out

    def _local(self, xd, xdiff, xd3, Z: torch.Tensor, nn: int) -> torch.Tensor:
        """Further variance reduction (b, 3N) from the nn nearest training frames given the directions."""
        b, n3 = len(xd), self.n3
        nb = self._nearest(xd, nn)  # (b, nn)
        f = nb.reshape(-1)
        rep = torch.arange(b, device=xd.device).repeat_interleave(nn)
        d, diff, d3 = self.d, self.diff, self.d3
        Kbx = pair_blocks(d[f], diff[f], d3[f], xd[rep], xdiff[rep], xd3[rep], self.q, self.sigma)
        Q = self.Q[f]  # (b nn, 3N, 6)
        G = Kbx - self.L[f] @ Z[rep]  # Cov(Y_b, F_x | directions): (b nn, 3N, 3N)
        G = (G - Q @ (Q.transpose(1, 2) @ G)).view(b, nn * n3, n3)
        S = torch.zeros(b, nn, n3, nn, n3, dtype=xd.dtype, device=xd.device)
        Sd = self.resid[f].view(b, nn, n3, n3)
        lift = float(self.resid.diagonal(dim1=1, dim2=2).mean()) + self.floor
        for i in range(nn):
            Qi = self.Q[nb[:, i]]
            S[:, i, :, i] = Sd[:, i] + lift * (Qi @ Qi.transpose(1, 2))
            for j in range(i + 1, nn):
                bi, bj = nb[:, i], nb[:, j]
                Kij = pair_blocks(d[bi], diff[bi], d3[bi], d[bj], diff[bj], d3[bj], self.q, self.sigma)
                Kij = Kij - self.L[bi] @ self.L[bj].transpose(1, 2)
                Pi = torch.eye(n3, dtype=xd.dtype, device=xd.device) - Qi @ Qi.transpose(1, 2)
                Qj = self.Q[bj]
                Pj = torch.eye(n3, dtype=xd.dtype, device=xd.device) - Qj @ Qj.transpose(1, 2)
                Kij = Pi @ Kij @ Pj
                S[:, i, :, j], S[:, j, :, i] = Kij, Kij.transpose(1, 2)
        S = S.view(b, nn * n3, nn * n3)
        S.diagonal(dim1=1, dim2=2).add_(self.floor)
        C, info = torch.linalg.cholesky_ex(0.5 * (S + S.transpose(1, 2)))
        ok = info == 0
        Y = torch.linalg.solve_triangular(C[ok], G[ok], upper=False)
        red = torch.zeros(b, n3, dtype=xd.dtype, device=xd.device)
        red[ok] = (Y * Y).sum(1)
        return red


def auto_rank(n_train: int, n_atoms: int, n_perms: int) -> int:
    """Default rank of the low-rank posterior: 4 directions per training frame, at least 1,000, at most 3,000.

    On aspirin (GFN2-xTB, 120 training frames, σ = 50; 6,840 non-rigid unknowns) the Spearman ρ between
    predicted std and true error per frame was 0.41 / 0.56 / 0.57 on held-out frames and 0.55 / 0.67 / 0.73
    on 1,000 K frames at rank 240 / 1,000 / exact. A geometry costs ~(4 P D + 3N D + 3N r / 2) r flop.
    """
    return int(max(1000, min(3000, 4 * n_train)))


def ml_amplitude2(ff, n_eff: int) -> float:
    """Maximum-likelihood signal variance s² = yᵀ(K + λ I)⁻¹ y / n of the fitted GP (y = F / std).

    yᵀ(K+λ)⁻¹y = βᵀ(K+λ)β ≈ Σ_b w_b · ∇_d T(x_b) (+ Σ_b α_b T(x_b) with energy constraints), from the
    stored descriptors d_b and weights w_b = J_b β_b.
    """
    T, y = ff._dk.contract(ff._d, ff._wp, ff._t, need_energy=ff._alpha is not None, energy_w=ff._ew)
    quad = float((ff._w * y).sum())
    n = n_eff
    if ff._alpha is not None:
        quad += float((ff._alpha * T).sum())
        n += len(ff._alpha)
    return max(quad, 0.0) / max(1, n)


def posterior(ff, method: str | None = None, **kw):
    """The model's cached posterior (built on first use; keyword arguments rebuild it).

    method : ``"separable"`` (:class:`~forcefield.kernel.separable.SeparablePosterior`, fast) or
        ``"posterior"`` (:class:`ForcePosterior`); default the model's ``std_method``.
    """
    method = method or getattr(ff, "std_method", None) or "separable"
    post = getattr(ff, "_posterior", None)
    if post is None or kw or post.method != method:
        if method == "separable":
            from .separable import SeparablePosterior

            post = SeparablePosterior(ff, **kw)
        elif method == "posterior":
            opts = dict(getattr(ff, "std_options", None) or {})
            opts.update(kw)
            post = ForcePosterior(ff, **opts)
        else:
            raise InputError(f"unknown std method {method!r} (separable or posterior)")
        ff._posterior = post
    return post


def std_scale(ff) -> float:
    """Factor from normalised posterior std to kcal/mol/Å: std · s (ML amplitude) or the calibrated one."""
    cal = getattr(ff, "std_scale", None)
    if cal is not None:
        return float(cal)
    return float(ff.std) * math.sqrt(posterior(ff).amplitude2)


def force_std(ff, R, batch: int = 256, per_component: bool = False) -> np.ndarray:
    """Posterior force std at geometries R (M, N, 3) Å: per atom (M, N) (RMS over x, y, z) in kcal/mol/Å,
    or per component (M, N, 3) with ``per_component``."""
    post = posterior(ff)
    R = torch.as_tensor(np.asarray(R, dtype=np.float64), device=ff.device)
    var = post.variance(R, batch=batch)
    var = var if per_component else var.mean(-1)
    return (var.sqrt() * std_scale(ff)).cpu().numpy()


def frame_std(std: np.ndarray) -> np.ndarray:
    """Per-frame predicted RMS force error (M,) from per-atom stds (M, N)."""
    return np.sqrt((np.asarray(std) ** 2).mean(1))


def calibrate_std(ff, R, F) -> float:
    """Fit the std scale on held-out frames so that RMS(predicted std) = RMS(force error) there.

    Sets and returns ``ff.std_scale`` (kcal/mol/Å per unit normalised std); saved with the model.
    """
    R = np.asarray(R, dtype=float)
    F = np.asarray(F, dtype=float)
    if len(R) == 0:
        raise InputError("calibrate_std needs at least one held-out frame")
    _, Fp = ff.predict(R)
    ff.std_scale = None
    s = force_std(ff, R)
    rms_err = float(np.sqrt(((Fp - F) ** 2).mean()))
    rms_std = float(np.sqrt((s ** 2).mean()))
    if not rms_std > 0:
        raise InputError("the predicted std is zero on every calibration frame (all of them training frames?)")
    ff.std_scale = std_scale(ff) * rms_err / rms_std
    return ff.std_scale


def calibration_figures(std: np.ndarray, F_pred: np.ndarray, F_ref: np.ndarray, draws: int = 200,
                        seed: int = 0) -> dict[str, float]:
    """Spearman ρ per frame (predicted RMS std vs true RMS force error) and RMS(error) / RMS(std).

    ``spearman_ideal`` is the ρ the same std would reach if it were exact: the mean over ``draws`` sets of
    errors drawn as independent Gaussians with the predicted std of each atom (every component), ranked
    against the std. Per-frame errors fluctuate even when their std is known, so this is a ceiling of ρ on
    these frames (independent components fluctuate least; correlated errors lower it further).
    """
    from scipy.stats import spearmanr

    std = np.asarray(std, dtype=float)
    err = np.sqrt(((np.asarray(F_pred) - np.asarray(F_ref)) ** 2).mean(axis=(1, 2)))
    s = frame_std(std)
    if len(err) < 3:
        return {"frames": len(err), "spearman": float("nan"), "spearman_ideal": float("nan"),
                "rms_ratio": float("nan"), "reason": "fewer than 3 frames"}
    rho = float(spearmanr(s, err).statistic)
    rng = np.random.default_rng(seed)
    ideal = [spearmanr(s, np.sqrt(((std[..., None] * rng.normal(size=std.shape + (3,))) ** 2).mean(axis=(1, 2))))
             .statistic for _ in range(draws)]
    return {"frames": int(len(err)), "spearman": rho, "spearman_ideal": float(np.mean(ideal)),
            "rms_ratio": float(np.sqrt((err ** 2).mean()) / np.sqrt((s ** 2).mean())),
            "rms_error": float(np.sqrt((err ** 2).mean())), "rms_std": float(np.sqrt((s ** 2).mean())),
            "force_mae": float(np.abs(np.asarray(F_pred) - np.asarray(F_ref)).mean())}
