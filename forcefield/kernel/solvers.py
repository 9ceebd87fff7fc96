"""Linear solvers for the kernel system (K + λ I) β = y, float64.

* :func:`cholesky_solve`: direct solve of a stored matrix (small problems).
* :func:`pcg`: matrix-free preconditioned conjugate gradient with checkpoint/resume.
* :class:`NystromPreconditioner`: low-rank approximation K ≈ C W⁺ Cᵀ from the 3N columns of
  inducing training points picked by block-pivoted Cholesky (largest residual diagonal first), applied
  through the Woodbury identity. The number of inducing points is chosen from the problem size
  (:func:`n_inducing_points`), then capped by a memory budget.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..fileio import load_npz, save_npz


def cholesky_solve(K: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve (K + λ I) x = y with a Cholesky factorisation (K is overwritten).

    If the factorisation fails the diagonal shift grows tenfold (up to 1e-4 of the mean diagonal), then
    an LU solve is used.
    """
    diag = K.diagonal()
    scale = float(diag.mean()) if K.numel() else 1.0
    shift = lam
    diag += shift
    while True:
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) == 0:
            return torch.cholesky_solve(y.reshape(len(y), -1), L).reshape(y.shape)
        if shift > 1e-4 * scale:
            break
        diag += 9 * shift if shift > 0 else 1e-12 * scale
        shift = 10 * shift if shift > 0 else 1e-12 * scale
    diag -= shift - lam
    return torch.linalg.solve(K, y.reshape(len(y), -1)).reshape(y.shape)


def n_inducing_points(n_train: int, n_atoms: int, n_perms: int = 1, coef: float = 0.45) -> int:
    """Inducing training points for the preconditioner, from the problem size.

    Each inducing point brings 3N columns; the rule is ``m = ceil(coef * M**0.73 * s * t)`` with
    ``s = sqrt(63 / 3N)`` (1 for a 21-atom molecule) and, for S permutations, ``t = sqrt(max(1, S / 6))``; at
    least 10 and at most M (the memory budget may lower it further). Measured on aspirin (S = 6, σ = 50,
    λ = 1e-10, rtol 1e-3, one core, loaded machine) with the Schur preconditioner: at M = 200, m = 15 / 22 /
    30 / 45 took 364 / 215 / 146 / 73 PCG iterations (build 1.1 / 1.9 / 2.9 / 5.4 s); at M = 1,000,
    m = 49 / 63 took 233 / 146 iterations and 94 / 82 s in all. The number of inducing points must grow faster
    than sqrt(M) (the build costs ~ 3NM (3N m)²). A PCG iteration costs S times more with S permutations, the
    factor's algebra does not, so beyond aspirin's 6 a richer preconditioner pays: alanine dipeptide (S = 27,
    M = 240, σ 80, one core, loaded), m = 25 / 40 / 50 / 60 / 80 took 336 / 158 / 93 / 56 / 26 iterations
    (build 13 / 22 / 29 / 42 / 62 s), 107 / 70 / 62 / 64 / 73 s in all (the rule: 51). Growing m as S**0.25
    for every S was slower on aspirin (M = 1,000, 2 cores: m 110 against 70, 107 against 70 s), hence t = 1
    up to S = 6.
    """
    m = int(math.ceil(coef * n_train ** 0.73 * math.sqrt(63.0 / (3.0 * max(n_atoms, 1)))
                      * math.sqrt(max(1.0, n_perms / 6.0))))
    return int(min(n_train, max(10, m)))


def pivoted_nystrom(kernel, n_points: int, resid: torch.Tensor, pivot_block: int = 1,
                    rank_per_point: int | None = None, progress: bool = False, shift: float = 0.0,
                    rigid: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """Block-pivoted Cholesky of the kernel over training points: K ≈ L Lᵀ on the pivots' columns.

    Each step takes the ``pivot_block`` points with the largest residual traces ``resid`` (M,), computes
    their kernel columns, removes what earlier pivots explain and keeps the numerically non-zero directions
    of their residual block (the rigid-body null space is dropped). ``resid`` is updated in place.

    ``shift`` factorises K + shift I instead (its pivot columns); with ``rigid`` (the bases (M, w, 6) of
    :meth:`HessianKernel.rigid_basis`) each pivot block is taken on the complement of its rigid motions.

    Returns L (n_unknowns, k) and the pivot points in the order taken; L = K[:, pivot unknowns] T for
    some T with T Tᵀ = (K_II + shift I)⁻¹ on the kept directions (L_I L_Iᵀ = K_II + shift I there).
    """
    from tqdm.auto import tqdm

    tr = kernel.train
    M, w, n = tr.n, kernel.width, kernel.n_unknowns
    dev, dt = tr.d.device, tr.d.dtype
    rows_of = kernel.point_rows(torch.arange(M, device=dev))  # (M, w)
    total = float(resid.sum())
    per = w if not rank_per_point else min(w, int(rank_per_point))
    L = torch.empty(n, n_points * per, dtype=dt, device=dev)
    k = 0
    points: list[int] = []
    bar = tqdm(total=n_points, desc="Nyström pivots", disable=not progress, mininterval=1.0)
    while len(points) < n_points:
        nb = min(pivot_block, n_points - len(points))
        js = torch.topk(resid, nb).indices
        js = js[resid[js] > 1e-12 * total]
        if not len(js):
            break
        C = kernel.columns(js)  # (n, nb*w)
        rj = rows_of[js].reshape(-1)
        if shift:
            C[rj, torch.arange(len(rj), device=dev)] += shift
        if k:
            C.addmm_(L[:, :k], L[rj, :k].T, alpha=-1.0)
        S = 0.5 * (C[rj] + C[rj].T)
        if rigid is not None:
            Qj = torch.block_diag(*rigid[js])
            Pj = torch.eye(len(rj), dtype=dt, device=dev) - Qj @ Qj.T
            S = Pj @ S @ Pj
        s, V = torch.linalg.eigh(S)
        keep = s > max(1e-10 * float(s.max()), 0.5 * shift)
        if rank_per_point:  # the leading directions of the pivots' residual block only
            keep &= torch.arange(len(s), device=s.device) >= len(s) - rank_per_point * len(js)
        Vk = V[:, keep] / s[keep].sqrt()
        Lnew = C @ Vk
        L[:, k:k + Lnew.shape[1]] = Lnew
        k += Lnew.shape[1]
        resid -= (Lnew * Lnew).sum(1)[rows_of].sum(1)
        resid[js] = -math.inf
        points += js.tolist()
        bar.update(len(js))
    bar.close()
    return L[:, :k], points


class NystromPreconditioner:
    """Low-rank (Nyström / pivoted-Cholesky) preconditioner for (K + λ I), applied through Woodbury.

    The factor comes from a block-pivoted Cholesky of K over training points: each step takes the point
    whose diagonal block has the largest residual trace, computes its 3N kernel columns (one
    :meth:`HessianKernel.block` call, never the full matrix), removes what earlier pivots explain and keeps
    the numerically non-zero directions (the rigid-body null space of each block is dropped). The result
    K ≈ L Lᵀ is the Nyström approximation on the pivot columns (k columns).

    Default (``block_diagonal=True``, PITC-style): P = L Lᵀ + Λ, Λ = blockdiag(K - L Lᵀ) + λ I with one
    exactly factorised 3N x 3N block per training point (or per cluster), and by Woodbury

        P⁻¹ = Λ⁻¹ - Z S⁻¹ Zᵀ,   Z = Λ⁻¹ L,   S = I + Lᵀ Z (k x k, Cholesky-factorised),

    so one n x k factor Z is kept. Plain variant: P = U Σ Uᵀ + λ I (U Σ Uᵀ = L Lᵀ), applied as
    λ P⁻¹ = I + U (λ (Σ + λ)⁻¹ - 1) Uᵀ. On aspirin (σ = 50, λ = 1e-10) the PITC form needed ~340 PCG
    iterations at M = 200 with 15 inducing points, where the plain form had not passed 0.7 relative
    residual after 18.

    Parameters
    ----------
    kernel : the :class:`~forcefield.kernel.kernel.HessianKernel` of the problem.
    lam : the regulariser λ of the system.
    n_points : inducing training points (see :func:`n_inducing_points`).
    block_diagonal : add the exact diagonal blocks of the residual K - L Lᵀ (PITC-style); much stronger.
    cluster_size : training points per exactly factorised diagonal block (block_diagonal only).
    rank_per_point : keep only this many leading directions of each pivot's residual block (all if None);
        the cost of the Woodbury factor grows with the square of the kept columns.
    max_bytes : memory allowed for the n x k factor and the kernel columns of one pivoting step; fewer points
        (and points per step) are used if they would not fit.
    pivot_block : training points taken per pivoting step (the ones with the largest residual traces);
        more than one turns the updates into matrix-matrix products (faster for large problems).
    """

    def __init__(self, kernel, lam: float, n_points: int, max_bytes: float = 2e9,
                 block_diagonal: bool = True, rank_per_point: int | None = None, cluster_size: int = 1,
                 pivot_block: int = 1, progress: bool = False) -> None:
        tr = kernel.train
        M, w = tr.n, kernel.width  # w unknowns per training point (3N, + 1 with energy constraints)
        n = kernel.n_unknowns
        per = w if not rank_per_point else min(w, int(rank_per_point))  # factor columns per inducing point
        col = 8.0 * n * w  # bytes of one point's kernel columns (computed per pivoting step)
        pivot_block = int(max(1, min(pivot_block, max_bytes / 8 // col)))
        n_points = int(max(1, min(n_points, M, (max_bytes - pivot_block * col) // (8 * n * per))))
        self.cluster_size = max(1, int(cluster_size))
        self.pivot_block = max(1, int(pivot_block))
        self.n = n
        diag = kernel.diag_blocks() if block_diagonal and self.cluster_size == 1 else None
        if diag is not None:
            resid = diag.diagonal(dim1=1, dim2=2).sum(1).clone()
        else:
            resid = kernel.diag_blocks().diagonal(dim1=1, dim2=2).sum(1)
        L, points = pivoted_nystrom(kernel, n_points, resid, self.pivot_block, rank_per_point, progress)
        k = L.shape[1]
        self.lam = float(lam)
        self.points = np.array(points)
        self.n_columns = k
        self.block_diagonal = block_diagonal
        if block_diagonal:
            self._init_pitc(kernel, L, diag)
            return
        evals, V = torch.linalg.eigh(L.T @ L)
        keep = evals > 1e-14 * float(evals.max())
        evals, V = evals[keep], V[:, keep]
        R = V / evals.sqrt()
        for s0 in range(0, n, 8192):  # U = L V Σ⁻¹, row block by row block
            L[s0:s0 + 8192, :R.shape[1]] = L[s0:s0 + 8192] @ R
        self.U = L[:, :R.shape[1]]
        self.evals = evals

    def _init_pitc(self, kernel, L: torch.Tensor, diag: torch.Tensor | None) -> None:
        """P = L Lᵀ + Λ with Λ = blockdiag(K - L Lᵀ) + λ I over clusters of similar training points.

        Clusters of at most ``cluster_size`` points come from recursive bisection along the principal axis
        of the descriptors, so near-duplicate geometries (the source of the smallest eigenvalues) share a
        block that is factorised exactly. The inverse of each block is stored (applied by batched products).
        Works in place: L becomes G = C⁻¹ L (Λ = C Cᵀ blockwise), S = I + GᵀG, then Z = C⁻ᵀ G, so only one
        n x k array is ever held.
        """
        tr = kernel.train
        k = L.shape[1]
        groups: dict[int, list] = {}
        chol: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.cluster_size == 1:  # one block per training point, in order
            groups[1] = list(torch.arange(tr.n, device=tr.d.device)[:, None])
        else:
            for c in _clusters(tr.d, self.cluster_size):
                groups.setdefault(len(c), []).append(c)
        self._groups = []
        for size, cl_all in groups.items():
            rows_g, inv_g = [], []
            step = max(1, 256 // size)  # clusters per chunk: bounded temporaries
            for c0 in range(0, len(cl_all), step):
                cl = cl_all[c0:c0 + step]
                idx = torch.stack(cl)  # (nc, size)
                rows = kernel.point_rows(idx.reshape(-1)).reshape(len(cl), -1)  # (nc, size*w)
                if size > 1:
                    Kc = torch.stack([kernel.dense(c.cpu().numpy(), c.cpu().numpy()) for c in cl])
                    # dense() orders forces then energies; rows here are point-major: reorder
                    order = kernel_order(size, kernel.n3, kernel.energy, Kc.device)
                    Kc = Kc[:, order][:, :, order]
                elif diag is not None:
                    Kc = diag[idx[:, 0]]
                else:
                    Kc = kernel.diag_blocks(idx[:, 0])
                Lc = L[rows]  # (nc, size*w, k)
                Lam = Kc - Lc @ Lc.transpose(1, 2)
                Lam = 0.5 * (Lam + Lam.transpose(1, 2))
                Lam.diagonal(dim1=1, dim2=2).add_(self.lam)
                jitter = 0.0
                while True:
                    C, info = torch.linalg.cholesky_ex(Lam)
                    if int(info.max()) == 0:
                        break
                    jitter = jitter * 10 if jitter else self.lam
                    Lam.diagonal(dim1=1, dim2=2).add_(jitter)
                # G = C⁻¹ L (Λ = C Cᵀ) through the inverses of the small triangular factors (a batched
                # solve with the n x k right-hand side copies it to column-major order twice)
                eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device).expand_as(C)
                G = torch.bmm(torch.linalg.solve_triangular(C, eye, upper=False), Lc)
                L[rows.reshape(-1)] = G.reshape(-1, k)  # L becomes G = blockdiag(C)⁻¹ L
                chol.append((rows, C))
                rows_g.append(rows)
                inv_g.append(torch.cholesky_inverse(C))
                del Kc, Lc, Lam
            self._groups.append((torch.cat(rows_g), torch.cat(inv_g)))
        S = _gram(L)  # Lᵀ Λ⁻¹ L = Gᵀ G
        S.diagonal().add_(1.0)
        self._S_chol = torch.linalg.cholesky(S)
        del S
        for rows, C in chol:  # G -> Z = C⁻ᵀ G = Λ⁻¹ L, in place
            r = rows.reshape(-1)
            L[r] = torch.linalg.solve_triangular(C.mT, L[rows], upper=True).reshape(-1, k)
        # P⁻¹ = Λ⁻¹ - Z S⁻¹ Zᵀ
        # (a float32 copy of Z for the products was tried: the two terms cancel to ~1e-10, so it diverges)
        self._Z = L

    def _block_solve(self, r: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(r)
        for rows, inv in self._groups:
            out[rows] = torch.bmm(inv, r[rows][..., None])[..., 0]
        return out

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """P⁻¹ r (for the low-rank-only variant λ P⁻¹ r; CG ignores constant factors)."""
        shape = r.shape
        if self.block_diagonal:
            v = r.reshape(-1)
            c = torch.cholesky_solve((self._Z.T @ v)[:, None], self._S_chol)[:, 0]
            return (self._block_solve(v) - self._Z @ c).reshape(shape)
        v = r.reshape(-1)
        c = self.U.T @ v
        out = v + self.U @ (c * (self.lam / (self.evals + self.lam) - 1.0))
        return out.reshape(shape)


def kernel_order(size: int, n3: int, energy: bool, device=None) -> torch.Tensor:
    """Permutation from :meth:`HessianKernel.dense` order (forces point-major, then energies) to
    point-major order (each point's 3N forces followed by its energy) for ``size`` points."""
    if not energy:
        return torch.arange(size * n3, device=device)
    f = torch.arange(size * n3, device=device).reshape(size, n3)
    e = (size * n3 + torch.arange(size, device=device))[:, None]
    return torch.cat([f, e], 1).reshape(-1)


def _gram(G: torch.Tensor, n_blocks: int = 4) -> torch.Tensor:
    """Gᵀ G from the upper triangle of column blocks (about 5/8 of the products of a plain Gᵀ G)."""
    k = G.shape[1]
    edges = [round(i * k / n_blocks) for i in range(n_blocks + 1)]
    S = torch.empty(k, k, dtype=G.dtype, device=G.device)
    for i in range(n_blocks):
        a0, a1 = edges[i], edges[i + 1]
        for j in range(i, n_blocks):
            b0, b1 = edges[j], edges[j + 1]
            S[a0:a1, b0:b1] = G[:, a0:a1].T @ G[:, b0:b1]
            if j != i:
                S[b0:b1, a0:a1] = S[a0:a1, b0:b1].T
    return S


def _clusters(d: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Index sets of at most ``size`` rows of d, by recursive bisection along the principal axis."""
    out: list[torch.Tensor] = []
    stack = [torch.arange(d.shape[0], device=d.device)]
    while stack:
        idx = stack.pop()
        if len(idx) <= size:
            out.append(idx)
            continue
        X = d[idx] - d[idx].mean(0)
        v = torch.linalg.svd(X, full_matrices=False).Vh[0]
        order = idx[torch.argsort(X @ v)]
        h = len(idx) // 2
        stack += [order[:h], order[h:]]
    return out


@dataclass
class CGResult:
    x: torch.Tensor
    n_iter: int
    rel_residual: float
    converged: bool
    seconds: float


def _fingerprint(b: torch.Tensor, extra: str) -> str:
    h = hashlib.md5(b.detach().cpu().numpy().tobytes())
    h.update(extra.encode())
    return h.hexdigest()


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
        precond: Callable[[torch.Tensor], torch.Tensor] | None = None, rtol: float = 1e-6,
        maxiter: int = 5000, x0: torch.Tensor | None = None, checkpoint: str | os.PathLike | None = None,
        checkpoint_every_s: float = 60.0, tag: str = "", progress: bool = False,
        flexible: bool = False) -> CGResult:
    """Preconditioned conjugate gradient for a symmetric positive definite operator.

    ``flexible`` uses the Polak-Ribière update β = zᵀ(r - r_old) / (z_oldᵀ r_old), robust to a
    preconditioner that varies slightly between applications.

    Stops when |b - A x| <= rtol |b|. With ``checkpoint`` the iterate is written there atomically every
    ``checkpoint_every_s`` seconds, and an existing checkpoint for the same right-hand side and ``tag``
    (e.g. hyper-parameters) is resumed from; the file is removed once the solve converges.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    precond = precond or (lambda r: r)
    fp = _fingerprint(b, tag) if checkpoint else ""
    start_iter = 0
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            ck = load_npz(checkpoint)
        except InputError:
            ck = {}
        if str(ck.get("fingerprint", "")) == fp and ck["x"].shape == tuple(b.shape):
            x0 = torch.as_tensor(ck["x"], dtype=b.dtype, device=b.device)
            start_iter = int(ck["n_iter"])
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    bnorm = float(torch.linalg.vector_norm(b)) or 1.0
    r = b - matvec(x) if x0 is not None else b.clone()
    z = precond(r)
    p = z.clone()
    rz = float((r * z).sum())
    res = float(torch.linalg.vector_norm(r)) / bnorm
    last_ck = time.perf_counter()
    it = start_iter
    bar = tqdm(total=maxiter, desc="kernel PCG", disable=not progress, mininterval=1.0, initial=it)
    while res > rtol and it < maxiter:
        Ap = matvec(p)
        alpha = rz / float((p * Ap).sum())
        x.add_(p, alpha=alpha)
        if flexible:
            r_old = r.clone()
        r.sub_(Ap, alpha=alpha)
        res = float(torch.linalg.vector_norm(r)) / bnorm
        it += 1
        bar.update(1)
        bar.set_postfix_str(f"rel. residual {res:.1e}", refresh=False)
        if res <= rtol:
            break
        z = precond(r)
        rz_new = float((r * z).sum())
        beta = (rz_new - float((r_old * z).sum())) / rz if flexible else rz_new / rz
        p.mul_(beta).add_(z)
        rz = rz_new
        if checkpoint is not None and time.perf_counter() - last_ck > checkpoint_every_s:
            save_npz(checkpoint, x=x.cpu().numpy(), n_iter=np.array(it), fingerprint=np.array(fp))
            last_ck = time.perf_counter()
    bar.close()
    if checkpoint is not None and res <= rtol and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    return CGResult(x=x, n_iter=it, rel_residual=res, converged=res <= rtol,
                    seconds=time.perf_counter() - t0)
