"""Kernel solver pieces: kernel slices, the rigid-motion null space, the Schur-complement preconditioner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import load_dataset
from forcefield.kernel.kernel import HessianKernel, TrainingSet
from forcefield.kernel.slices import KernelSlice
from forcefield.kernel.precond import SchurPreconditioner
from forcefield.kernel.solvers import cholesky_solve, kernel_order, pcg, pivoted_nystrom

DATA = Path(__file__).parent / "data"
METHYL = np.array([np.arange(9), [0, 1, 2, 4, 5, 3, 6, 7, 8], [0, 1, 2, 5, 3, 4, 6, 7, 8]])


@pytest.fixture(scope="module")
def train():
    ds = load_dataset(DATA / "ethanol_xtb.npz")
    return TrainingSet.from_positions(torch.as_tensor(ds.R[:14]), METHYL), ds


def _dense_pointmajor(kern):
    """The full kernel matrix with unknowns ordered point-major (each point's forces, then its energy)."""
    M = kern.train.n
    order = kernel_order(M, kern.n3, kern.energy)
    return kern.dense()[order][:, order]


@pytest.mark.parametrize("energy", [False, True])
@pytest.mark.parametrize("gemm", [True, False])  # incidence-GEMM Jacobians (small molecules) or gather/scatter
def test_kernel_slice_is_the_dense_block(train, energy, gemm):
    kern = HessianKernel(train[0], 10.0, energy=energy)
    assert kern._pj_gemm is not None
    K = _dense_pointmajor(kern)
    if not gemm:
        kern._pj_gemm = None
    w = kern.width
    rows, cols = np.array([0, 5, 6, 13]), np.array([2, 6, 9])
    ri = (rows[:, None] * w + np.arange(w)).reshape(-1)
    ci = (cols[:, None] * w + np.arange(w)).reshape(-1)
    v = torch.randn(len(cols), w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = KernelSlice(kern, rows, cols)(v).reshape(-1)
    ref = K[ri][:, ci] @ v.reshape(-1)
    assert torch.allclose(got, ref, rtol=1e-11, atol=1e-13 * float(ref.abs().max()))


def test_column_blocks_match_the_sparse_block(train):
    kern = HessianKernel(train[0], 10.0)
    a, b = torch.arange(14), torch.tensor([1, 7, 12])
    Kff = kern._cross(a, b)[0].reshape(14 * 27, 3 * 27)
    ref = kern.block(a.numpy(), b.numpy())  # independent implementation (per-pair outer products)
    assert torch.allclose(Kff, ref, rtol=1e-11, atol=1e-14 * float(ref.abs().max()))


@pytest.mark.parametrize("energy", [False, True])
def test_rigid_motions_are_exact_null_directions(train, energy):
    kern = HessianKernel(train[0], 10.0, energy=energy)
    Q = kern.rigid_basis()  # (M, w, 6)
    assert torch.allclose(Q.transpose(1, 2) @ Q, torch.eye(6, dtype=Q.dtype).expand(14, 6, 6), atol=1e-12)
    rows = kern.point_rows(torch.arange(14))
    v = torch.zeros(kern.n_unknowns, dtype=torch.float64)
    v[rows] = (Q @ torch.randn(14, 6, 1, dtype=torch.float64))[..., 0]
    Kv = kern.matvec(v)
    assert float(Kv.norm()) < 1e-9 * float(kern.matvec(torch.randn_like(v)).norm())
    # projection: idempotent, removes exactly that part
    r = torch.randn_like(v)
    p = kern.project_rigid(r)
    assert torch.allclose(kern.project_rigid(p), p, atol=1e-13)
    assert torch.allclose(kern.project_rigid(v), torch.zeros_like(v), atol=1e-12)


@pytest.mark.parametrize("energy", [False, True])
def test_schur_preconditioner_is_the_inverse_of_its_matrix(train, energy):
    """P⁻¹ applied by block elimination equals the inverse of the dense PITC matrix it stands for."""
    kern = HessianKernel(train[0], 10.0, energy=energy)
    lam = 1e-6
    M, w = 14, kern.width
    K = _dense_pointmajor(kern) + lam * torch.eye(M * w, dtype=torch.float64)
    Q = kern.rigid_basis()
    resid = kern.diag_blocks().diagonal(dim1=1, dim2=2).sum(1).clone()
    L, pts = pivoted_nystrom(kern, 4, resid, 1, shift=lam, rigid=Q)
    order = kernel_order(M, kern.n3, energy)
    L = L[order]  # point-major rows
    Pm = L @ L.T
    Pi = torch.eye(M * w, dtype=torch.float64)
    for a in range(M):
        s = slice(a * w, (a + 1) * w)
        Pm[s, s] = K[s, s]
        Pi[s, s] -= Q[a] @ Q[a].T
    P = SchurPreconditioner(kern, lam, 4, pivot_block=1)
    assert sorted(P.points.tolist()) == sorted(pts)
    r = kern.project_rigid(torch.randn(M * w, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    z = P(r)
    z_pm = z[kern.point_rows(torch.arange(M)).reshape(-1)]
    r_pm = r[kern.point_rows(torch.arange(M)).reshape(-1)]
    # z solves P z = r on the complement of the rigid motions, and has no rigid part itself
    assert float((Pi @ (Pm @ z_pm) - r_pm).norm()) <= 1e-8 * float(r.norm())
    assert torch.allclose(kern.project_rigid(z), z, atol=1e-12 * float(z.abs().max()))
    # symmetric positive definite on that complement
    r2 = kern.project_rigid(torch.randn_like(r))
    assert abs(float(r2 @ P(r)) - float(r @ P(r2))) <= 1e-9 * abs(float(r @ P(r)))
    assert float(r @ z) > 0


@pytest.mark.parametrize("energy", [False, True])
def test_pcg_with_schur_agrees_with_cholesky(train, energy):
    t, ds = train
    kern = HessianKernel(t, 10.0, energy=energy)
    y = torch.as_tensor(ds.F[:14]).reshape(-1)
    if energy:
        y = torch.cat([y, torch.as_tensor(ds.E[:14].mean() - ds.E[:14])])
    y = kern.project_rigid(y / float(y.std()))
    lam = 1e-8
    x_ch = kern.project_rigid(cholesky_solve(kern.dense(), y, lam))
    P = SchurPreconditioner(kern, lam, 3)
    res = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000)
    assert res.converged
    assert float((res.x - x_ch).norm() / x_ch.norm()) <= 1e-6


_KILLED = r"""
import sys, time, numpy as np, torch
from forcefield import load_dataset
from forcefield.kernel.kernel import HessianKernel, TrainingSet
from forcefield.kernel.solvers import pcg
ds = load_dataset(sys.argv[1])
kern = HessianKernel(TrainingSet.from_positions(torch.as_tensor(ds.R[:12]), np.arange(9)[None]), 10.0)
y = torch.as_tensor(ds.F[:12]) / float(ds.F[:12].std())
def slow(v):
    time.sleep(0.05)
    return kern.matvec(v, 1e-4)
pcg(slow, y, None, rtol=1e-30, maxiter=10 ** 6, checkpoint=sys.argv[2], checkpoint_every_s=0.0, tag="kill")
"""


def test_killed_pcg_resumes_from_its_checkpoint(tmp_path):
    """A solve killed (SIGKILL) mid-way resumes from its last checkpoint and reaches the same solution."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from forcefield.fileio import load_npz

    ck = tmp_path / "pcg.npz"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(DATA / "ethanol_xtb.npz"), str(ck)],
                            cwd=Path(__file__).parent.parent, env=dict(os.environ, OMP_NUM_THREADS="1"))
    done = 0
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.2)
        try:
            done = int(load_npz(ck)["n_iter"]) if ck.exists() else 0
        except Exception:  # being replaced at this moment
            continue
        if done >= 5:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if done < 5:
        pytest.skip("the solver subprocess did not reach 5 iterations in time (machine too loaded)")
    done = int(load_npz(ck)["n_iter"])  # the last checkpoint written before the kill
    ds = load_dataset(DATA / "ethanol_xtb.npz")
    kern = HessianKernel(TrainingSet.from_positions(torch.as_tensor(ds.R[:12]), np.arange(9)[None]), 10.0)
    y = torch.as_tensor(ds.F[:12]) / float(ds.F[:12].std())
    res = pcg(lambda v: kern.matvec(v, 1e-4), y, None, rtol=1e-10, maxiter=20000, checkpoint=ck, tag="kill")
    assert res.converged and not ck.exists() and res.n_iter > done
    assert float((kern.matvec(res.x, 1e-4) - y).norm() / y.norm()) < 1e-8  # the true residual
    ref = pcg(lambda v: kern.matvec(v, 1e-4), y, None, rtol=1e-10, maxiter=20000)
    assert float((res.x - ref.x).norm() / ref.x.norm()) < 1e-6


def test_woodbury_on_leading_directions_fits_its_budget_and_agrees_with_cholesky(train):
    """Woodbury keeping r leading directions per inducing point: the memory budget (factor plus one pivoting
    step's columns) bounds the points, the factor has at most r columns per point, the solve agrees with the
    direct one."""
    from forcefield import KernelForceField
    from forcefield.kernel.solvers import NystromPreconditioner

    t, ds = train
    kern = HessianKernel(t, 10.0)
    n, w = kern.n_unknowns, kern.width
    col = 8.0 * n * w  # bytes of one point's kernel columns
    P = NystromPreconditioner(kern, 1e-8, 6, max_bytes=col + 3 * 8.0 * n * 11, rank_per_point=11)
    assert len(P.points) == 3 and 0 < P.n_columns <= 3 * 11
    kw = dict(sigma=10.0, lam=1e-8, perms=METHYL)
    ref = KernelForceField(solver="cholesky", **kw).fit(ds.R[:14], ds.z, F=ds.F[:14])
    ff = KernelForceField(solver="cg", rtol=1e-10, maxiter=20000, n_inducing=6, preconditioner="woodbury",
                          rank_per_point=11, **kw).fit(ds.R[:14], ds.z, F=ds.F[:14])
    assert ff.info["preconditioner"] == "woodbury" and ff.info["rank_per_point"] == 11
    assert ff.info["n_columns"] <= 6 * 11
    _, F_ref = ref.predict(ds.R[14:20])
    _, F = ff.predict(ds.R[14:20])
    assert np.abs(F - F_ref).max() <= 1e-5 * np.abs(F_ref).max()


def test_scalar_pivots_shrink_is_the_scalar_gp_residual(train):
    """Lean preconditioner pieces: the shrink factors equal an independently written scalar GP residual
    1 - κ_bI κ_II⁻¹ κ_Ib / κ_bb over the chosen points (zero on them), and each pivot is the point with the
    largest residual given the earlier ones."""
    from forcefield.kernel.precond import scalar_pivots

    t, _ = train
    kern = HessianKernel(t, 10.0)
    pts, v = scalar_pivots(kern, 5)
    d = t.d.numpy()
    q = t.q.numpy()
    sig = 10.0

    def kappa(a, b):  # Σ_p (1 + √5 r/σ) exp(-√5 r/σ) 5/(3σ³) σ... up to the constant the code uses
        r = np.sqrt(5.0) * np.linalg.norm(d[a][None, :] - d[b][q], axis=1)
        return float((np.exp(-r / sig) * 5.0 / (3.0 * sig ** 3) * (r + sig)).sum())

    K = np.array([[kappa(a, b) for b in range(14)] for a in range(14)])
    assert np.allclose(K, K.T, rtol=1e-10)
    ref = np.empty(14)
    for b in range(14):
        kI = K[b, pts]
        ref[b] = 1.0 - kI @ np.linalg.solve(K[np.ix_(pts, pts)], kI) / K[b, b]
    assert np.allclose(v.numpy(), np.clip(ref, 0, 1), atol=1e-8)
    assert np.all(v.numpy()[pts] == 0.0) and np.all(v.numpy() >= 0) and np.all(v.numpy() <= 1)
    for j in range(1, len(pts)):  # greedy: pivot j has the largest residual given pivots < j
        I = pts[:j]
        res = [K[b, b] - K[b, I] @ np.linalg.solve(K[np.ix_(I, I)], K[I, b]) if b not in I else -1 for b in range(14)]
        assert pts[j] == int(np.argmax(res))


@pytest.mark.parametrize("energy", [False, True])
def test_lean_preconditioner_is_spd_and_pcg_agrees_with_cholesky(train, energy):
    """The lean (separable-residual) Schur preconditioner: symmetric positive definite on the complement of
    the rigid motions, and PCG with it reaches the direct solution."""
    t, ds = train
    kern = HessianKernel(t, 10.0, energy=energy)
    lam = 1e-8
    P = SchurPreconditioner(kern, lam, 4, lean=True)
    assert P.lean and len(P.points) == 4
    g = torch.Generator().manual_seed(3)
    r = kern.project_rigid(torch.randn(kern.n_unknowns, dtype=torch.float64, generator=g))
    r2 = kern.project_rigid(torch.randn(kern.n_unknowns, dtype=torch.float64, generator=g))
    z = P(r)
    assert torch.allclose(kern.project_rigid(z), z, atol=1e-12 * float(z.abs().max()))
    assert abs(float(r2 @ P(r)) - float(r @ P(r2))) <= 1e-9 * abs(float(r @ z))
    assert float(r @ z) > 0
    y = torch.as_tensor(ds.F[:14]).reshape(-1)
    if energy:
        y = torch.cat([y, torch.as_tensor(ds.E[:14].mean() - ds.E[:14])])
    y = kern.project_rigid(y / float(y.std()))
    x_ch = kern.project_rigid(cholesky_solve(kern.dense(), y, lam))
    res = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000)
    assert res.converged
    assert float((res.x - x_ch).norm() / x_ch.norm()) <= 1e-6


def test_lean_preconditioner_memory_is_its_inducing_block_only(train):
    """The lean build's budget bounds only the (m w)² inducing block (two copies), not 3NM x m w columns, so
    the same budget holds more inducing points than the exact build's pivoted factor."""
    import math

    t, _ = train
    kern = HessianKernel(t, 10.0)
    n, w = kern.n_unknowns, kern.width
    budget = 4 * 8.0 * n * w  # four points' kernel columns
    exact = SchurPreconditioner(kern, 1e-8, 8, max_bytes=budget)
    lean = SchurPreconditioner(kern, 1e-8, 8, max_bytes=budget, lean=True)
    assert len(lean.points) == min(8, math.isqrt(int(budget / 16)) // w)
    assert len(lean.points) > len(exact.points) >= 1


def test_auto_preconditioner_goes_lean_when_the_exact_factor_does_not_fit(train):
    """preconditioner='auto': the exact Schur build while its pivoted factor holds every inducing point,
    the lean one when the memory budget would cut them; both reach the direct solution."""
    from forcefield import KernelForceField

    t, ds = train
    kw = dict(sigma=10.0, lam=1e-8, perms=METHYL, solver="cg", rtol=1e-10, maxiter=20000, n_inducing=5)
    ref = KernelForceField(solver="cholesky", sigma=10.0, lam=1e-8, perms=METHYL).fit(ds.R[:14], ds.z, F=ds.F[:14])
    _, F_ref = ref.predict(ds.R[14:20])
    col_gb = 8.0 * 14 * 27 * 27 / 2 ** 30  # one point's kernel columns
    for budget, kind in ((100 * col_gb, "schur"), (3 * col_gb, "lean")):
        ff = KernelForceField(max_memory_gb=budget, **kw).fit(ds.R[:14], ds.z, F=ds.F[:14])
        assert ff.info["preconditioner"] == kind
        assert ff.info["n_inducing"] == (5 if kind == "schur" else min(5, int(np.sqrt(budget * 2 ** 30 / 16)) // 27))
        _, F = ff.predict(ds.R[14:20])
        assert np.abs(F - F_ref).max() <= 1e-5 * np.abs(F_ref).max()
