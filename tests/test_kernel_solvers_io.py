"""Kernel force field: PCG vs Cholesky, checkpoint/resume, files (own and sGDML), bad inputs, MD, ASE."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import InputError, KernelForceField, load_dataset
from forcefield.kernel.kernel import HessianKernel, TrainingSet
from forcefield.kernel.solvers import NystromPreconditioner, cholesky_solve, pcg

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ethanol():
    return load_dataset(DATA / "ethanol_xtb.npz")


@pytest.fixture(scope="module")
def system(ethanol):
    R = torch.as_tensor(ethanol.R[:12])
    y = torch.as_tensor(ethanol.F[:12]) / float(ethanol.F[:12].std())
    perms = np.array([np.arange(9), [0, 1, 2, 4, 5, 3, 6, 7, 8], [0, 1, 2, 5, 3, 4, 6, 7, 8]])
    kern = HessianKernel(TrainingSet.from_positions(R, perms), 10.0)
    return kern, y


def test_matvec_is_the_stored_matrix(system):
    kern, y = system
    K = kern.block(np.arange(12), np.arange(12))
    v = torch.randn(12, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(kern.matvec(v, 1e-3).reshape(-1), K @ v.reshape(-1) + 1e-3 * v.reshape(-1),
                          rtol=1e-11, atol=1e-14)
    assert torch.allclose(K, K.T, atol=1e-14)
    # without the cached kernel profile (memory linear in M) the product is the same
    lean = HessianKernel(kern.train, kern.sigma, cache_bytes=0, block_size=5)
    assert torch.allclose(lean.matvec(v, 1e-3), kern.matvec(v, 1e-3), rtol=1e-12, atol=1e-14)
    assert lean._cache is None and kern._cache is not None


def test_stratified_split():
    from forcefield.kernel.model import stratified_split

    E = np.random.default_rng(0).normal(size=500)
    tr, va, te = stratified_split(E, 50, 100, 100, seed=1)
    assert len(set(tr) | set(va) | set(te)) == 250
    # one training frame per energy decile-like stratum: the training energies span the range evenly
    q = np.searchsorted(np.sort(E), E[tr])
    assert np.all(np.diff(np.sort(q)) > 0) and q.min() < 10 and q.max() > 490
    with pytest.raises(InputError, match="asked for"):
        stratified_split(E, 400, 200)


@pytest.mark.parametrize("block_diagonal,cluster", [(True, 1), (True, 4), (False, 1)])
def test_pcg_agrees_with_cholesky(system, block_diagonal, cluster):
    kern, y = system
    lam = 1e-8
    x_ch = cholesky_solve(kern.block(np.arange(12), np.arange(12)), y.reshape(-1), lam).reshape(y.shape)
    P = NystromPreconditioner(kern, lam, 3, block_diagonal=block_diagonal, cluster_size=cluster)
    res = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000)
    assert res.converged
    assert float((res.x - x_ch).norm() / x_ch.norm()) <= 1e-6


def test_pcg_checkpoint_resume(system, tmp_path):
    kern, y = system
    lam = 1e-8
    P = NystromPreconditioner(kern, lam, 3)
    ck = tmp_path / "cg.npz"
    part = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5, checkpoint=ck,
               checkpoint_every_s=0.0, tag="t")
    assert not part.converged and ck.exists()
    full = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000, checkpoint=ck, tag="t")
    assert full.converged and full.n_iter > 5 and not ck.exists()
    ref = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=5000)
    assert float((full.x - ref.x).norm() / ref.x.norm()) < 1e-6
    # a checkpoint for another problem (tag) is ignored
    pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=3, checkpoint=ck, checkpoint_every_s=0.0,
        tag="other")
    fresh = pcg(lambda v: kern.matvec(v, lam), y, P, rtol=1e-12, maxiter=2, checkpoint=ck, tag="t")
    assert fresh.n_iter == 2


def test_model_cg_vs_cholesky(ethanol):
    ds = ethanol
    kw = dict(sigma=10, perms=None, lam=1e-8)
    a = KernelForceField(solver="cholesky", **kw).fit(ds.R[:15], ds.z, F=ds.F[:15], E=ds.E[:15])
    b = KernelForceField(solver="cg", rtol=1e-12, n_inducing=4, **kw).fit(ds.R[:15], ds.z, F=ds.F[:15],
                                                                         E=ds.E[:15])
    Ea, Fa = a.predict(ds.R[40:50])
    Eb, Fb = b.predict(ds.R[40:50])
    assert np.abs(Fa - Fb).max() <= 1e-6 * np.abs(Fa).max()
    assert np.abs(Ea - Eb).max() < 1e-6
    assert b.info["solver"] == "cg" and b.info["cg_iterations"] > 0


def test_save_load_round_trip(ethanol, tmp_path):
    ds = ethanol
    ff = KernelForceField(sigma=10).fit(ds.R[:10], ds.z, F=ds.F[:10], E=ds.E[:10])
    p = ff.save(tmp_path / "m.npz")
    ff2 = KernelForceField.load(p)
    E, F = ff.predict(ds.R[40:45])
    E2, F2 = ff2.predict(ds.R[40:45])
    assert np.array_equal(E, E2) and np.array_equal(F, F2)
    assert np.array_equal(ff2.perms, ff.perms) and ff2.sigma_ == ff.sigma_
    np.load(p, allow_pickle=False)  # plain arrays only


def test_sgdml_import_reproduces_sgdml():
    """tests/data/sgdml_ethanol_model.npz was trained by sgdml 1.0.3; its predictions are stored."""
    ff = KernelForceField.load(DATA / "sgdml_ethanol_model.npz")
    ref = np.load(DATA / "sgdml_ethanol_pred.npz")
    E, F = ff.predict(ref["R"])
    assert len(ff.perms) == 6
    assert np.abs(E - ref["E"]).max() <= 1e-8 * np.abs(ref["E"]).max()
    assert np.linalg.norm(F - ref["F"]) <= 1e-8 * np.linalg.norm(ref["F"])


def test_bad_inputs(ethanol, tmp_path):
    ds = ethanol
    ff = KernelForceField(sigma=10, perms=None)
    with pytest.raises(InputError, match="shape"):
        ff.fit(ds.R[:5, :8], ds.z, F=ds.F[:5])
    with pytest.raises(InputError, match="F must"):
        ff.fit(ds.R[:5], ds.z, F=ds.F[:4])
    R = ds.R[:5].copy()
    R[3, 2, 1] = np.nan
    with pytest.raises(InputError, match="frame 3"):
        ff.fit(R, ds.z, F=ds.F[:5])
    with pytest.raises(InputError, match="one energy per frame"):
        ff.fit(ds.R[:5], ds.z, F=ds.F[:5], E=ds.E[:3])
    with pytest.raises(InputError, match="perms"):
        KernelForceField(perms=np.array([[2, 1, 0, 3, 4, 5, 6, 7, 8]])).fit(ds.R[:5], ds.z, F=ds.F[:5])
    ff.fit(ds.R[:5], ds.z, F=ds.F[:5])
    with pytest.raises(InputError, match="9 atoms"):
        ff.predict(np.zeros((2, 7, 3)))
    with pytest.raises(InputError, match="NaN"):
        ff.predict(R[3:4])
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(InputError, match="corrupt.npz"):
        KernelForceField.load(bad)
    txt = tmp_path / "model.npz"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not a readable"):
        KernelForceField.load(txt)
    with pytest.raises(InputError, match="no such file"):
        KernelForceField.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(InputError, match="not a kernel force-field"):
        KernelForceField.load(other)
    with pytest.raises(RuntimeError, match="not fitted"):
        KernelForceField().predict(ds.R[:1])


def test_md_label_and_ase(ethanol, tmp_path):
    from forcefield.kernel.ase_calc import KCAL_MOL_IN_EV, KernelCalculator
    from forcefield.kernel.md import label_dataset, run_md, trajectory_to_dataset

    ds = ethanol
    ff = KernelForceField(sigma=10).fit(ds.R[:20], ds.z, F=ds.F[:20], E=ds.E[:20])
    lab = label_dataset(ff, ds[40:45])
    E, F = ff.predict(ds.R[40:45])
    assert np.array_equal(lab.F, F) and np.array_equal(lab.E, E)
    traj = run_md(ff, ds.R[0], n_steps=40, n_replicas=3, save_every=10, dt_fs=0.5, temperature=300,
                  progress=False)
    assert traj.R.shape == (4, 3, 9, 3) and (traj.n_valid == 4).all()
    out = trajectory_to_dataset(traj, ds.z)
    E2, F2 = ff.predict(out.R)
    assert np.allclose(F2, out.F, atol=1e-8) and np.allclose(E2, out.E, atol=1e-6)
    from ase import Atoms

    atoms = Atoms(numbers=ds.z, positions=ds.R[41])
    atoms.calc = KernelCalculator(ff)
    assert np.isclose(atoms.get_potential_energy(), E[1] * KCAL_MOL_IN_EV)
    assert np.allclose(atoms.get_forces(), F[1] * KCAL_MOL_IN_EV)
    u = ds[40:45].to_universe()
    from forcefield.kernel.md import label_universe

    lu = label_universe(ff, u)
    assert np.allclose(lu.F, F, atol=1e-4)
