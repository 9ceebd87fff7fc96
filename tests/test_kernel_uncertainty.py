"""Posterior force std of the kernel force field: the exact GP posterior, its growth away from the data,
the low-rank form as an upper bound, calibration and file round trips."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import KernelForceField, load_dataset
from forcefield.errors import InputError
from forcefield.geometry import random_rotation
from forcefield.kernel.kernel import HessianKernel, TrainingSet
from forcefield.kernel.uncertainty import (ForcePosterior, calibrate_std, calibration_figures, force_std,
                                           positions_from_descriptors)

DATA = Path(__file__).parent / "data"
METHYL = np.array([[0, 1, 2, *q, 6, 7, 8] for q in itertools.permutations([3, 4, 5])])
TRAIN = np.arange(0, 40, 5)
TEST = np.array([41, 43, 47, 55, 59, 3])


@pytest.fixture(scope="module")
def ethanol():
    return load_dataset(DATA / "ethanol_xtb.npz")


@pytest.fixture(scope="module")
def ff(ethanol):
    ds = ethanol
    return KernelForceField(sigma=10, perms=METHYL, solver="cholesky", std_method="posterior").fit(
        ds.R[TRAIN], ds.z, F=ds.F[TRAIN])


@pytest.fixture(scope="module")
def ffs(ethanol):
    """The same model with the default (separable) std."""
    ds = ethanol
    return KernelForceField(sigma=10, perms=METHYL, solver="cholesky").fit(ds.R[TRAIN], ds.z, F=ds.F[TRAIN])


def dense_posterior_variance(ff, R_train, R_test):
    """Diagonal of K_xx - K_xX (K + λ I)⁻¹ K_Xx from explicit kernel matrices (rigid motions lifted)."""
    R = torch.as_tensor(np.concatenate([R_train, R_test]))
    kern = HessianKernel(TrainingSet.from_positions(R, ff.perms), ff.sigma_)
    M, B = len(R_train), len(R_test)
    tr, te = np.arange(M), np.arange(M, M + B)
    K = kern.dense(tr, tr)
    Q = kern.rigid_basis()[:M]
    QQ = torch.block_diag(*[q @ q.T for q in Q])
    A = K + ff.lam * torch.eye(len(K), dtype=K.dtype) + float(K.diagonal().mean()) * QQ
    Kx = kern.dense(te, tr)
    var = kern.dense(te, te).diagonal() - (Kx @ torch.linalg.solve(A, Kx.T)).diagonal()
    return var.reshape(B, -1, 3).numpy()


def test_std_is_the_exact_gp_posterior(ff, ethanol):
    post = ForcePosterior(ff)
    assert post.exact and post.rank == post.n_eff
    ref = dense_posterior_variance(ff, ethanol.R[TRAIN], ethanol.R[TEST])
    var = post.variance(torch.as_tensor(ethanol.R[TEST])).numpy()
    assert np.abs(var - ref).max() < 1e-7 * np.abs(ref).max()
    # in kcal/mol/Å: std · s · sqrt(variance), per atom the RMS over x, y, z
    S = force_std(ff, ethanol.R[TEST])
    s = ff.std * np.sqrt(post.amplitude2)
    assert np.allclose(S, s * np.sqrt(ref.mean(-1)), rtol=1e-6, atol=1e-9 * S.max())


def test_forces_unchanged_by_return_std(ff, ethanol):
    E0, F0 = ff.predict(ethanol.R[TEST])
    E1, F1, S = ff.predict(ethanol.R[TEST], return_std=True)
    assert np.array_equal(F0, F1) and np.array_equal(E0, E1)
    assert S.shape == ethanol.R[TEST].shape[:2]


@pytest.mark.parametrize("method", ["posterior", "separable"])
def test_std_grows_away_from_training_data(ff, ffs, ethanol, method):
    ff = ff if method == "posterior" else ffs
    x0 = ethanol.R[TRAIN[3]]
    direction = np.random.default_rng(0).normal(size=x0.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    amps = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
    S = force_std(ff, x0[None] + amps[:, None, None] * direction[None]).mean(1)
    assert S[0] < 1e-3 * S[-1]  # at a training geometry the forces are known (noise λ only)
    assert np.all(np.diff(S) > 0)


@pytest.mark.parametrize("method", ["posterior", "separable"])
def test_std_invariant_under_rotation_and_permutation(ff, ffs, ethanol, method):
    ff = ff if method == "posterior" else ffs
    R = ethanol.R[TEST[:3]]
    S = force_std(ff, R)
    rot = random_rotation(np.random.default_rng(3))
    assert np.allclose(force_std(ff, R @ rot.T + 2.0), S, rtol=1e-6)
    p = METHYL[2]
    assert np.allclose(force_std(ff, R[:, p]), S[:, p], rtol=1e-6)


def test_low_rank_bounds_the_exact_variance(ff, ethanol):
    R = torch.as_tensor(ethanol.R[TEST])
    exact = ForcePosterior(ff).variance(R)
    tot = exact.sum((1, 2))
    prev = None
    for rank in (20, 60, 120):
        post = ForcePosterior(ff, rank=rank, per_frame=4)
        for nn in (0, 2):
            v = post.variance(R, neighbours=nn).sum((1, 2))
            assert torch.all(v >= tot * (1 - 1e-6))
        if prev is not None:  # more directions condition on more data
            assert torch.all(v <= prev * (1 + 1e-6))
        prev = v
    full = ForcePosterior(ff, rank=10 ** 6, per_frame=6).variance(R, neighbours=2).sum((1, 2))
    assert torch.allclose(full, tot, rtol=1e-6)


def test_calibration_and_round_trip(ff, ethanol, tmp_path):
    val = np.arange(41, 50)
    scale = calibrate_std(ff, ethanol.R[val], ethanol.F[val])
    _, F, S = ff.predict(ethanol.R[val], return_std=True)
    fig = calibration_figures(S, F, ethanol.F[val])
    assert abs(fig["rms_ratio"] - 1.0) < 1e-9
    path = ff.save(tmp_path / "m.npz")
    ff2 = KernelForceField.load(path)
    assert ff2.std_scale == pytest.approx(scale)
    assert np.allclose(ff2.predict(ethanol.R[TEST], return_std=True)[2], force_std(ff, ethanol.R[TEST]), rtol=1e-9)
    ff.std_scale = None


def test_positions_from_descriptors_give_the_same_std(ff, ethanol):
    """Models without training positions (sGDML imports): embedding by MDS leaves the std unchanged."""
    from forcefield.kernel.descriptor import descriptor

    R = positions_from_descriptors(descriptor(torch.as_tensor(ethanol.R[TRAIN]))[0].numpy())
    d0 = descriptor(torch.as_tensor(ethanol.R[TRAIN]))[0]
    assert torch.allclose(descriptor(torch.as_tensor(R))[0], d0, rtol=1e-8)
    S = force_std(ff, ethanol.R[TEST])
    saved, ff.R_train = ff.R_train, None
    ff._posterior = None
    try:
        assert np.allclose(force_std(ff, ethanol.R[TEST]), S, rtol=1e-6)
    finally:
        ff.R_train, ff._posterior = saved, None


def test_calibration_figures_need_frames():
    fig = calibration_figures(np.ones((2, 3)), np.zeros((2, 3, 3)), np.ones((2, 3, 3)))
    assert np.isnan(fig["spearman"]) and np.isnan(fig["spearman_ideal"]) and "fewer" in fig["reason"]


def test_ideal_spearman_is_the_ceiling_of_an_exact_std():
    """Errors drawn from the std itself reach about spearman_ideal; it is high when the std varies across
    frames far more than per-frame errors fluctuate, and near zero when every frame has the same std."""
    rng = np.random.default_rng(5)
    F_ref = np.zeros((300, 7, 3))
    wide = np.exp(rng.uniform(0.0, np.log(10.0), size=(300, 1))) * np.ones((1, 7))
    narrow = np.exp(rng.uniform(0.0, np.log(1.1), size=(300, 1))) * np.ones((1, 7))
    for std, lo, hi in ((wide, 0.9, 1.0), (narrow, -0.05, 0.3)):
        F_pred = std[..., None] * rng.normal(size=F_ref.shape)
        fig = calibration_figures(std, F_pred, F_ref, draws=100)
        assert lo < fig["spearman_ideal"] < hi
        assert abs(fig["spearman"] - fig["spearman_ideal"]) < 0.12


def _kappa_numpy(R1, R2, perms, sigma):
    """κ(x, b) = Σ_p (1 + √5ρ/σ) exp(-√5ρ/σ) · 5/(3σ³) σ, ρ = |d(x) - d(P_p b)|, written out in numpy."""
    def desc(R):
        i, j = np.tril_indices(R.shape[0], k=-1)
        return 1.0 / np.linalg.norm(R[i] - R[j], axis=1)
    out = 0.0
    for p in perms:
        rho = np.sqrt(5.0) * np.linalg.norm(desc(R1) - desc(R2[p]))
        out += np.exp(-rho / sigma) * 5.0 / (3.0 * sigma ** 3) * (rho + sigma)
    return out


def test_separable_shrink_is_the_scalar_gp_posterior(ethanol):
    """With two training frames, v(x) = 1 - k_xᵀ K⁻¹ k_x / κ(x, x) from κ written out independently."""
    from forcefield.kernel.separable import SeparablePosterior

    tr = np.array([0, 20])
    ff2 = KernelForceField(sigma=10, perms=METHYL, solver="cholesky").fit(ethanol.R[tr], ethanol.z,
                                                                          F=ethanol.F[tr])
    post = SeparablePosterior(ff2, jitter=1e-14)
    perms = ff2.perms
    K = np.array([[_kappa_numpy(ethanol.R[a], ethanol.R[b], perms, 10.0) for b in tr] for a in tr])
    v = post.shrink(torch.as_tensor(ethanol.R[TEST])).numpy()
    for x, vx in zip(ethanol.R[TEST], v):
        k = np.array([_kappa_numpy(x, ethanol.R[b], perms, 10.0) for b in tr])
        kxx = _kappa_numpy(x, x, perms, 10.0)
        assert vx == pytest.approx(1.0 - k @ np.linalg.solve(K, k) / kxx, rel=1e-6, abs=1e-9)
    # the variance is v times the prior variance per atom of the nearest training frame, in its atom order
    from forcefield.kernel.uncertainty import prior_diagonal

    R0 = ethanol.R[TRAIN[1]]
    rot = random_rotation(np.random.default_rng(1))
    p = METHYL[4]
    x = (R0 @ rot.T)[p][None] + 1e-3 * np.random.default_rng(2).normal(size=(1, 9, 3))  # a copy of frame 1
    post = SeparablePosterior(ff_one := KernelForceField(sigma=10, perms=METHYL, solver="cholesky").fit(
        ethanol.R[TRAIN], ethanol.z, F=ethanol.F[TRAIN]))
    prior = prior_diagonal(torch.as_tensor(R0[None]), torch.as_tensor(ff_one.perms), 10.0).view(9, 3).mean(-1)
    var = post.variance(torch.as_tensor(x))[0]
    v1 = post.shrink(torch.as_tensor(x))[0]
    assert torch.allclose(var, (v1 * prior[p])[:, None].expand(-1, 3), rtol=1e-12)


def test_separable_std_ranks_frames_like_the_exact_posterior(ff, ffs, ethanol):
    """Per-frame std of the separable approximation orders frames as the exact posterior does, stays below
    the prior, and more training data lowers it everywhere."""
    from scipy.stats import spearmanr

    from forcefield.kernel.separable import SeparablePosterior

    R = ethanol.R[40:]
    exact = np.sqrt((force_std(ff, R) ** 2).mean(1))
    sep = np.sqrt((force_std(ffs, R) ** 2).mean(1))
    assert spearmanr(exact, sep).statistic > 0.8
    v_all = SeparablePosterior(ffs).shrink(torch.as_tensor(R))
    assert torch.all(v_all <= 1.0) and torch.all(v_all >= 0.0)
    half = KernelForceField(sigma=10, perms=METHYL, solver="cholesky").fit(
        ethanol.R[TRAIN[::2]], ethanol.z, F=ethanol.F[TRAIN[::2]])
    v_half = SeparablePosterior(half).shrink(torch.as_tensor(R))
    assert torch.all(v_all <= v_half + 1e-12) and float((v_half / v_all).median()) > 1.5


def test_std_method_round_trip(ffs, ethanol, tmp_path):
    val = np.arange(41, 50)
    scale = calibrate_std(ffs, ethanol.R[val], ethanol.F[val])
    ff2 = KernelForceField.load(ffs.save(tmp_path / "s.npz"))
    assert ff2.std_method == "separable" and ff2.std_scale == pytest.approx(scale)
    assert np.allclose(ff2.predict(ethanol.R[TEST], return_std=True)[2], force_std(ffs, ethanol.R[TEST]),
                       rtol=1e-9)
    ffs.std_scale = None
    with pytest.raises(InputError, match="std_method"):
        KernelForceField(std_method="ensemble")


def test_prior_diagonal_is_the_diagonal_of_the_prior_blocks(ethanol):
    """The N x N pair-matrix form equals the diagonal of the dense 3N x 3N prior blocks."""
    from forcefield.kernel.descriptor import descriptor, descriptor_permutation
    from forcefield.kernel.uncertainty import prior_blocks, prior_diagonal

    R = torch.as_tensor(ethanol.R[TEST])
    q = torch.as_tensor(np.stack([descriptor_permutation(p) for p in METHYL]))
    d, diff, d3 = descriptor(R)
    for sigma in (3.0, 10.0):
        ref = prior_blocks(d, diff, d3, q, sigma).diagonal(dim1=1, dim2=2)
        fast = prior_diagonal(R, torch.as_tensor(METHYL), sigma)
        assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
