"""Kernel force field with energy constraints (sGDML's use_E_cstr) and the explicit kernel blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import InputError, KernelForceField, load_dataset
from forcefield.kernel.kernel import HessianKernel, TrainingSet
from forcefield.kernel.solvers import NystromPreconditioner, cholesky_solve, pcg

DATA = Path(__file__).parent / "data"
METHYL = np.array([np.arange(9), [0, 1, 2, 4, 5, 3, 6, 7, 8], [0, 1, 2, 5, 3, 4, 6, 7, 8]])


@pytest.fixture(scope="module")
def ethanol():
    return load_dataset(DATA / "ethanol_xtb.npz")


@pytest.fixture(scope="module")
def train(ethanol):
    return TrainingSet.from_positions(torch.as_tensor(ethanol.R[:10]), METHYL)


@pytest.mark.parametrize("energy", [False, True])
def test_explicit_blocks_match_the_operator(train, energy):
    kern = HessianKernel(train, 10.0, energy=energy)
    K = kern.dense()
    n = 10 * (27 + (1 if energy else 0))
    assert K.shape == (n, n) == (kern.n_unknowns,) * 2
    assert torch.allclose(K, K.T, atol=1e-13)
    assert float(torch.linalg.eigvalsh(K).min()) > -1e-10 * float(K.diagonal().max())
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for k in (kern, HessianKernel(train, 10.0, energy=energy, cache_bytes=0, block_size=3)):
        assert torch.allclose(k.matvec(v, 1e-3), K @ v + 1e-3 * v, rtol=1e-11, atol=1e-13)
    rows = kern.point_rows(np.arange(10))
    D = kern.diag_blocks()
    for i in (0, 7):
        assert torch.allclose(D[i], K[rows[i]][:, rows[i]], atol=1e-14)
        assert torch.allclose(kern.columns(i), K[:, rows[i]], atol=1e-14)
    # the force-force part is the (slower, older) block() path
    assert torch.allclose(K[:270, :270], kern.block(np.arange(10), np.arange(10)), atol=1e-14)
    # a sub-matrix for other point sets
    Ks = kern.dense([2, 5], [1, 2, 9])
    if not energy:
        assert torch.allclose(Ks, K[rows[[2, 5]].reshape(-1)][:, rows[[1, 2, 9]].reshape(-1)], atol=1e-14)


def test_energy_blocks_are_derivatives_of_the_energy_kernel(ethanol):
    """cov(T_a, ∇T_b) = ∇_b k(a, b) and cov(∇T_a, ∇T_b) = ∇_b cov(∇T_a, T_b), by central differences."""
    R0 = torch.as_tensor(ethanol.R[:3]).clone()

    def K(R):
        return HessianKernel(TrainingSet.from_positions(R, METHYL), 10.0, energy=True).dense()

    K0 = K(R0)
    n = 3 * 27
    h = 1e-5
    g = np.zeros(27)
    H = np.zeros((27, 27))
    for i in range(27):
        Rp, Rm = R0.clone(), R0.clone()
        Rp[1].view(-1)[i] += h
        Rm[1].view(-1)[i] -= h
        Kp, Km = K(Rp), K(Rm)
        g[i] = (Kp[n, n + 1] - Km[n, n + 1]) / (2 * h)
        H[:, i] = ((Kp[:27, n + 1] - Km[:27, n + 1]) / (2 * h)).numpy()
    assert np.abs(g - K0[n, 27:54].numpy()).max() < 1e-7 * np.abs(g).max()
    assert np.abs(H - K0[:27, 27:54].numpy()).max() < 1e-7 * np.abs(H).max()


@pytest.mark.parametrize("cluster", [1, 3])
def test_pcg_agrees_with_cholesky_energy(train, ethanol, cluster):
    kern = HessianKernel(train, 10.0, energy=True)
    y = torch.cat([torch.as_tensor(ethanol.F[:10]).reshape(-1), torch.as_tensor(ethanol.E[:10].mean() - ethanol.E[:10])])
    y = y / float(y.std())
    lam = 1e-8
    x_ch = cholesky_solve(kern.dense(), y, lam)
    P = NystromPreconditioner(kern, lam, 3, cluster_size=cluster)
    res = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000)
    assert res.converged
    assert float((res.x - x_ch).norm() / x_ch.norm()) <= 1e-6


@pytest.fixture(scope="module")
def ff_e(ethanol):
    # lam 1e-6: with sGDML's 1e-10 the energy coefficients reach ~1e7 and the energy is a sum of large
    # cancelling terms, so finite differences of it are dominated by round-off (~1e-4 relative)
    ds = ethanol
    return KernelForceField(sigma=10, lam=1e-6, perms=METHYL, solver="cholesky", energy_constraints=True).fit(
        ds.R[:30], ds.z, F=ds.F[:30], E=ds.E[:30])


def test_energy_constraints_forces_are_minus_gradient(ff_e, ethanol):
    x = ethanol.R[45].copy()
    E0, F = ff_e.predict(x[None])
    h = 1e-3
    fd = np.zeros_like(x)
    for i in range(len(x)):
        for a in range(3):
            e = []
            for s in (-2, -1, 1, 2):  # fourth-order central differences
                xp = x.copy()
                xp[i, a] += s * h
                e.append(ff_e.predict(xp[None])[0][0])
            fd[i, a] = -(e[0] - 8 * e[1] + 8 * e[2] - e[3]) / (12 * h)
    assert np.abs(fd - F[0]).max() < 1e-6 * max(1.0, np.abs(F).max())
    # torch path, invariance under the symmetries
    for p in METHYL[1:]:
        Ep, Fp = ff_e.predict(x[None][:, p])
        assert np.allclose(Ep, E0, atol=1e-7, rtol=0) and np.allclose(Fp, F[:, p], atol=1e-7, rtol=0)


def test_energy_constraints_fit_the_training_energies(ethanol):
    ds = ethanol
    kw = dict(sigma=10, perms=METHYL, solver="cholesky")  # sGDML's lam = 1e-10
    plain = KernelForceField(**kw).fit(ds.R[:30], ds.z, F=ds.F[:30], E=ds.E[:30])
    ff_e = KernelForceField(energy_constraints=True, **kw).fit(ds.R[:30], ds.z, F=ds.F[:30], E=ds.E[:30])
    mae = {k: float(np.abs(m.predict(ds.R[:30])[0] - ds.E[:30]).mean()) for k, m in
           (("plain", plain), ("cstr", ff_e))}
    assert mae["cstr"] < 0.8 * mae["plain"], mae
    assert ff_e.info["energy_constraints"] and ff_e._alpha is not None and len(ff_e._alpha) == 30
    # forces on unseen frames stay as good (within a few per cent)
    fa = np.abs(plain.predict(ds.R[40:])[1] - ds.F[40:]).mean()
    fb = np.abs(ff_e.predict(ds.R[40:])[1] - ds.F[40:]).mean()
    assert fb < 1.1 * fa


def test_energy_constraints_cg_vs_cholesky(ethanol):
    ds = ethanol
    kw = dict(sigma=10, perms=None, lam=1e-8, energy_constraints=True)
    a = KernelForceField(solver="cholesky", **kw).fit(ds.R[:15], ds.z, F=ds.F[:15], E=ds.E[:15])
    b = KernelForceField(solver="cg", rtol=1e-12, n_inducing=4, **kw).fit(ds.R[:15], ds.z, F=ds.F[:15],
                                                                         E=ds.E[:15])
    Ea, Fa = a.predict(ds.R[40:50])
    Eb, Fb = b.predict(ds.R[40:50])
    assert b.info["solver"] == "cg" and b.info["cg_iterations"] > 0
    assert np.abs(Fa - Fb).max() <= 1e-6 * np.abs(Fa).max()
    assert np.abs(Ea - Eb).max() < 1e-6


def test_energy_constraints_save_load(ff_e, ethanol, tmp_path):
    p = ff_e.save(tmp_path / "m.npz")
    ff2 = KernelForceField.load(p)
    assert ff2.energy_constraints
    E, F = ff_e.predict(ethanol.R[40:45])
    E2, F2 = ff2.predict(ethanol.R[40:45])
    assert np.array_equal(E, E2) and np.array_equal(F, F2)
    with np.load(p, allow_pickle=False) as f:
        st = dict(f)
    st["alpha"] = st["alpha"][:-1]
    np.savez(tmp_path / "bad.npz", **st)
    with pytest.raises(InputError, match="alpha"):
        KernelForceField.load(tmp_path / "bad.npz")


def test_energy_constraints_need_energies(ethanol):
    with pytest.raises(InputError, match="energies"):
        KernelForceField(energy_constraints=True).fit(ethanol.R[:5], ethanol.z, F=ethanol.F[:5])


def test_sgdml_energy_constrained_import():
    """tests/data/sgdml_ethanol_ecstr_model.npz: sgdml 1.0.3 with use_E_cstr (alphas_E); predictions stored."""
    ff = KernelForceField.load(DATA / "sgdml_ethanol_ecstr_model.npz")
    ref = np.load(DATA / "sgdml_ethanol_ecstr_pred.npz")
    E, F = ff.predict(ref["R"])
    assert ff.energy_constraints and ff.info["imported_from"] == "sgdml"
    assert np.abs(E - ref["E"]).max() <= 1e-8 * np.abs(ref["E"]).max()
    assert np.linalg.norm(F - ref["F"]) <= 1e-8 * np.linalg.norm(ref["F"])
