"""Kernel force field physics: forces = -grad E, invariances, symmetry detection, agreement with sgdml."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import KernelForceField, load_dataset
from forcefield.geometry import random_rotation
from forcefield.kernel.symmetry import close_group, detect_permutations

DATA = Path(__file__).parent / "data"
METHYL = np.array([[0, 1, 2, *q, 6, 7, 8] for q in itertools.permutations([3, 4, 5])])


@pytest.fixture(scope="module")
def ethanol():
    return load_dataset(DATA / "ethanol_xtb.npz")


@pytest.fixture(scope="module")
def ff(ethanol):
    ds = ethanol
    return KernelForceField(sigma=10, perms=METHYL, solver="cholesky").fit(ds.R[:30], ds.z, F=ds.F[:30],
                                                                          E=ds.E[:30])


def test_forces_are_minus_energy_gradient(ff, ethanol):
    x = ethanol.R[45].copy()
    _, F = ff.predict(x[None])
    h = 1e-4
    fd = np.zeros_like(x)
    for i in range(len(x)):
        for a in range(3):
            xp, xm = x.copy(), x.copy()
            xp[i, a] += h
            xm[i, a] -= h
            fd[i, a] = -(ff.predict(xp[None])[0][0] - ff.predict(xm[None])[0][0]) / (2 * h)
    assert np.abs(fd - F[0]).max() < 1e-5 * max(1.0, np.abs(F).max())


def test_rotation_translation_invariance(ff, ethanol):
    R = ethanol.R[40:44]
    E, F = ff.predict(R)
    rot = random_rotation(np.random.default_rng(1))
    E2, F2 = ff.predict(R @ rot.T + np.array([3.0, -2.0, 7.5]))
    assert np.allclose(E2, E, atol=1e-7, rtol=0)
    assert np.allclose(F2, F @ rot.T, atol=1e-7, rtol=0)


def test_permutation_invariance(ff, ethanol):
    R = ethanol.R[40:44]
    E, F = ff.predict(R)
    for p in METHYL[1:]:
        Ep, Fp = ff.predict(R[:, p])
        assert np.allclose(Ep, E, atol=1e-7, rtol=0)
        assert np.allclose(Fp, F[:, p], atol=1e-7, rtol=0)
    # a permutation that is not a symmetry (swap C and O... same element needed: swap two CH2 hydrogens
    # with a methyl hydrogen) changes the prediction
    q = np.arange(9)
    q[[3, 6]] = [6, 3]
    assert not np.allclose(ff.predict(R[:, q])[0], E, atol=1e-3)


def test_matches_sgdml_trained_on_same_split(ff):
    """The same data, σ, λ and symmetries give the same model as sgdml 1.0.3 (stored predictions)."""
    ref = np.load(DATA / "sgdml_ethanol_pred.npz")
    E, F = ff.predict(ref["R"])
    assert np.abs(F - ref["F"]).max() < 1e-4 * np.abs(ref["F"]).max()
    assert np.abs(E - ref["E"]).max() < 1e-3


def test_detect_methyl_rotation(ethanol):
    R0 = ethanol.R[0]
    rng = np.random.default_rng(0)
    frames = [R0]
    cyc = np.array([0, 1, 2, 4, 5, 3, 6, 7, 8])  # methyl turned by 120°: atom 3 sits where 4 was, ...
    for k in range(6):
        R = R0[cyc] if k % 2 else R0.copy()
        frames.append(R + 0.02 * rng.normal(size=R.shape))
    perms = detect_permutations(np.array(frames), ethanol.z, mirror=False, complete_rotors=False)
    assert len(perms) == 3  # the rotation seen, closed: C3
    assert np.array_equal(perms[0], np.arange(9))
    assert any(np.array_equal(p, cyc) or np.array_equal(p, np.argsort(cyc)) for p in perms)
    full = {tuple(p) for p in detect_permutations(np.array(frames), ethanol.z)}
    assert {tuple(p) for p in METHYL} <= full  # rotor completed to S3 (as sGDML finds)
    # the detected group leaves the model invariant
    ds = ethanol
    ff = KernelForceField(sigma=10, perms=perms).fit(ds.R[:10], ds.z, F=ds.F[:10])
    E, F = ff.predict(ds.R[40:42])
    E2, F2 = ff.predict(ds.R[40:42][:, cyc])
    assert np.allclose(E2, E, atol=1e-7) and np.allclose(F2, F[:, cyc], atol=1e-7)


def test_no_symmetry_in_rigid_frames(ethanol):
    perms = detect_permutations(ethanol.R[:20], ethanol.z)
    assert perms.shape[1] == 9 and np.array_equal(perms[0], np.arange(9))


def test_close_group():
    g = close_group([np.array([1, 2, 0, 3]), np.array([0, 1, 2, 3])])
    assert len(g) == 3
    assert len(close_group([np.array([1, 0, 2, 3]), np.array([0, 2, 1, 3])])) == 6


def test_sigma_selection_and_energy_constant(ethanol):
    ds = ethanol
    ff = KernelForceField(sigma=[2, 10, 40], perms=None).fit(ds.R[:40], ds.z, F=ds.F[:40], E=ds.E[:40])
    scores = ff.info["sigma_scores"]
    assert set(scores) == {2.0, 10.0, 40.0}
    assert ff.sigma_ == min(scores, key=scores.get)
    E, _ = ff.predict(ds.R[:40])
    assert abs(np.mean(E - ds.E[:40])) < 0.2  # the constant c is fitted on the training part


def test_sigma_selection_refits_on_every_frame(ethanol):
    """After σ is chosen on a split of the training frames, the model is the fit at that σ on all of them
    (refit=True), or the split's fit (refit=False); the refit reproduces the validation frames it now holds."""
    R, z, F, E = ethanol.R[:40], ethanol.z, ethanol.F[:40], ethanol.E[:40]
    kw = dict(sigma=[2, 10, 40], perms=None, solver="cholesky")
    a = KernelForceField(**kw).fit(R, z, F=F, E=E)
    b = KernelForceField(**kw, refit=False).fit(R, z, F=F, E=E)
    assert a.sigma_ == b.sigma_ and a.info["refit_frames"] == 40 and "refit_frames" not in b.info
    one = KernelForceField(sigma=a.sigma_, perms=None, solver="cholesky").fit(R, z, F=F, E=E)
    Xq = ethanol.R[50:60]
    np.testing.assert_allclose(a.predict(Xq)[1], one.predict(Xq)[1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(a.predict(Xq)[0], one.predict(Xq)[0], rtol=0, atol=1e-8)
    # the split's fit has not seen its validation fifth; the refit interpolates every training frame
    err_a = np.abs(a.predict(R)[1] - F).max()  # (the rigid projection keeps it above 0)
    err_b = np.abs(b.predict(R)[1] - F).max()
    assert err_a < 0.1 * err_b, (err_a, err_b)


def test_device_argument_and_torch_predict(ff, ethanol):
    E, F = ff.predict(ethanol.R[40:42])
    Et, Ft = ff.predict_torch(torch.as_tensor(ethanol.R[40:42]))
    assert np.allclose(Et.numpy(), E) and np.allclose(Ft.numpy(), F)
    ff2 = KernelForceField(sigma=10, perms=None, device="cpu").fit(ethanol.R[:5], ethanol.z, F=ethanol.F[:5])
    assert ff2.device.type == "cpu"
