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
