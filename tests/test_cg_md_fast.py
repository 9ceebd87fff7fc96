"""The fast CG MD path: analytic prior and FeatureNet forces equal autograd's; the fast integrator follows
the same trajectory as the autograd one; a compiled step that cannot be built falls back cleanly; the
symmetry-factored kernel predictor equals the kernel model's prediction."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from cg.md import run_cg_md
from cg.potential import CGPotential, FeatureNet, SchNetCG, build_potential
from cg.priors import Priors


def _chain(n: int = 6, seed: int = 0, frames: int = 400) -> np.ndarray:
    """Frames of a wiggly bead chain (Å): bonds 3.8 ± 0.05 Å, angles spread widely, torsions all around."""
    rng = np.random.default_rng(seed)
    R = np.zeros((frames, n, 3))
    for k in range(1, n):
        step = rng.normal(size=(frames, 3))
        step[:, 0] += 1.2
        L = rng.normal(3.8, 0.05, size=(frames, 1))
        R[:, k] = R[:, k - 1] + L * step / np.linalg.norm(step, axis=1, keepdims=True)
    return R


def _priors(damp: bool = True) -> tuple[Priors, np.ndarray, np.ndarray]:
    R = _chain()
    bonds = np.array([[k, k + 1] for k in range(5)])
    pri = Priors.fit(R, bonds, 300.0, all_dihedrals=True)
    pri.damp_collinear = damp
    return pri, R, bonds


def _autograd(module, x):
    xg = x.clone().requires_grad_(True)
    E = module(xg)
    (g,) = torch.autograd.grad(E.sum(), xg)
    return E.detach(), -g


@pytest.mark.parametrize("damp", [True, False])
def test_analytic_prior_forces_equal_autograd(damp):
    pri, R, _ = _priors(damp)
    x = torch.as_tensor(R[:64] + np.random.default_rng(1).normal(scale=0.3, size=R[:64].shape))
    # two frames with beads 1-2-3 almost on a line: the damped torsions' forces stay finite and exact
    x[:2, 2] = 0.5 * (x[:2, 1] + x[:2, 3]) + 0.02
    E, F = pri.energy_forces(x)
    Ea, Fa = _autograd(pri, x)
    assert torch.isfinite(F).all()
    assert torch.allclose(E, Ea, rtol=1e-10, atol=1e-9)
    assert torch.allclose(F, Fa, rtol=1e-8, atol=1e-8 * Fa.abs().max().item())
    # Newton's third law: no net force on an isolated system
    assert F.sum(1).abs().max() < 1e-8 * F.abs().max()


@pytest.mark.parametrize("torsions", ["smooth", "angle"])
def test_analytic_feature_net_forces_equal_autograd(torsions):
    pri, R, bonds = _priors()
    torch.manual_seed(0)
    net = FeatureNet(6, bonds, hidden=16, layers=2, reference=R, torsions=torsions).double()
    with torch.no_grad():
        for p in net.mlp.parameters():
            p.normal_()
    x = torch.as_tensor(R[100:140])
    E, F = net.energy_forces(x)
    Ea, Fa = _autograd(net, x)
    assert torch.allclose(E, Ea, rtol=1e-10, atol=1e-9)
    assert torch.allclose(F, Fa, rtol=1e-8, atol=1e-9 * Fa.abs().max().item())


@pytest.mark.parametrize("network", ["features", "schnet"])
def test_fast_potential_path_equals_autograd_float32(network):
    """The MD force path (float32, as in MD) agrees with autograd through the potential to float tolerance."""
    pri, R, bonds = _priors()
    torch.manual_seed(1)
    pot = build_potential(pri, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds, network=network,
                          reference=R, hidden=16)
    x = torch.as_tensor(R[:32], dtype=torch.float32)
    E0, F0 = pot.force_fn(torch.float32, fast=False)(x)
    E1, F1 = pot.force_fn(torch.float32, fast=True)(x)
    scale = F0.abs().max().item()
    assert torch.allclose(E1, E0, rtol=1e-5, atol=1e-4)
    assert torch.allclose(F1, F0, atol=2e-5 * scale)


def test_fast_and_autograd_md_follow_the_same_trajectory():
    """Same seed, float64: the fast engine integrates exactly the dynamics of the autograd engine."""
    pri, R, bonds = _priors()
    pot = CGPotential(pri, None, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds)
    kw = dict(dt_fs=2.0, save_every=10, dtype=torch.float64, seed=4, progress=False, max_bond_deviation=None)
    a = run_cg_md(pot, R[:8], 200, fast=False, **kw)
    b = run_cg_md(pot, R[:8], 200, fast=True, **kw)
    assert a.engine == "autograd" and b.engine == "fast"
    assert np.allclose(a.traj.R, b.traj.R, atol=1e-8) and np.allclose(a.traj.E, b.traj.E, atol=1e-7)
    assert b.ns_per_day > 0 and b.ns_per_day == pytest.approx(8 * b.ns_per_day_per_replica)


def test_compiled_step_falls_back_when_compiling_fails(monkeypatch):
    """Where torch.compile cannot build the step, MD warns and runs the eager step: same trajectory."""
    pri, R, bonds = _priors()
    pot = CGPotential(pri, None, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds)
    kw = dict(dt_fs=2.0, save_every=10, dtype=torch.float64, seed=2, progress=False)
    ref = run_cg_md(pot, R[:4], 60, **kw)

    def broken(fn, **_):
        def call(*a):
            raise RuntimeError("no C++ compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run = run_cg_md(pot, R[:4], 60, compile=True, **kw)
    assert any("eager step" in str(m.message) for m in w)
    assert np.allclose(run.traj.R, ref.traj.R, atol=1e-10)


def test_miscompiled_step_is_caught_and_replaced_by_the_eager_step(monkeypatch):
    """A compiled step whose forces disagree with the eager step's (a miscompilation: seen with torch 2.13's
    inductor on a gated FeatureNet potential under no_grad) is checked on its first call: MD warns and runs
    the eager step, so the trajectory is the eager one."""
    from forcefield.langevin import _baoab_step

    pri, R, bonds = _priors()
    pot = CGPotential(pri, None, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds)
    kw = dict(dt_fs=2.0, save_every=10, dtype=torch.float64, seed=2, progress=False)
    ref = run_cg_md(pot, R[:4], 60, **kw)

    import forcefield.langevin as lv

    def wrong_forces(force_fn, dev):  # the right step with forces 10 % off
        def step(*a):
            x, v, F, E = _baoab_step(force_fn, *a)
            return x, v, 1.1 * F, E
        return step

    monkeypatch.setattr(lv, "compile_step", wrong_forces)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run = run_cg_md(pot, R[:4], 60, compile=True, **kw)
    assert any("disagrees with the eager step" in str(m.message) for m in w)
    assert np.allclose(run.traj.R, ref.traj.R, atol=1e-10)
    x = torch.ones(2, 3, 3)
    same = (x, x, x, x[:, 0, 0])
    assert lv._step_mismatch(same, same) == ""
    assert "forces" in lv._step_mismatch((x, x, 1.01 * x, x[:, 0, 0]), same)


@pytest.mark.skipif(os.environ.get("CGWB_TEST_COMPILE") == "0",
                    reason="CGWB_TEST_COMPILE=0: torch.compile skipped (13 s on a quiet 2-core machine, minutes under load)")
def test_compiled_step_equals_eager():
    pri, R, bonds = _priors()
    torch.manual_seed(0)
    pot = build_potential(pri, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds, network="features",
                          reference=R, hidden=16)
    kw = dict(dt_fs=2.0, save_every=10, seed=2, progress=False, max_bond_deviation=None)
    a = run_cg_md(pot, R[:4], 100, **kw)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = run_cg_md(pot, R[:4], 100, compile=True, **kw)
    if b.engine != "fast+compile":  # no compiler backend on this machine: the fallback has its own test
        pytest.skip(f"torch.compile unavailable here: {[str(m.message) for m in w][:1]}")
    assert np.allclose(a.traj.R, b.traj.R, atol=1e-3)


def test_symmetry_factored_kernel_predictor_equals_model():
    from forcefield import KernelForceField
    from forcefield.dataset import load_dataset
    from forcefield.kernel.md import SymmetryFactoredPredictor, run_md

    here = os.path.join(os.path.dirname(__file__), "data")
    ds = load_dataset(os.path.join(here, "ethanol_xtb.npz"))
    for name in ("sgdml_ethanol_model.npz", "sgdml_ethanol_ecstr_model.npz"):
        ff = KernelForceField.load(os.path.join(here, name))
        sp = SymmetryFactoredPredictor(ff)
        assert len(ff.perms) > 1 and sp.flops_ratio < 1.0
        x = torch.as_tensor(ds.R[:12])
        E0, F0 = ff.predict_torch(x)
        E1, F1 = sp(x)
        assert torch.allclose(F1, F0, rtol=0, atol=1e-8 * F0.abs().max().item())
        assert torch.allclose(E1, E0, rtol=0, atol=1e-6 * max(1.0, E0.abs().max().item()))
        E2, F2 = SymmetryFactoredPredictor(ff, block=7)(x)  # training points in blocks: the same sums
        assert torch.allclose(F2, F0, rtol=0, atol=1e-8 * F0.abs().max().item())
        assert torch.allclose(E2, E0, rtol=0, atol=1e-6 * max(1.0, E0.abs().max().item()))
    a = run_md(ff, ds.R[0], n_steps=30, n_replicas=2, save_every=10, fast=False, progress=False)
    b = run_md(ff, ds.R[0], n_steps=30, n_replicas=2, save_every=10, fast=True, progress=False)
    assert np.allclose(a.R, b.R, atol=1e-8)


def test_repulsion_neighbour_list_misses_no_pair():
    """MD with a Verlet list: saved forces equal the all-pairs forces with the same cutoff at every frame."""
    from cg.analytic_forces import prior_energy_forces

    rng = np.random.default_rng(3)
    n = 40
    R = np.zeros((300, n, 3))
    for k in range(1, n):
        step = rng.normal(size=(300, 3))
        R[:, k] = R[:, k - 1] + rng.normal(3.8, 0.05, (300, 1)) * step / np.linalg.norm(step, axis=1, keepdims=True)
    bonds = np.array([[k, k + 1] for k in range(n - 1)])
    pri = Priors.fit(R, bonds, 300.0, dihedrals=False)
    pot = CGPotential(pri, None, ["A"] * n, np.full(n, 50.0), bonds)
    run = run_cg_md(pot, R[:3], 300, dt_fs=5.0, save_every=20, dtype=torch.float64, progress=False,
                    friction_per_ps=0.1, repulsion_cutoff=6.0, max_bond_deviation=None, temperature=600.0)
    Rs = torch.as_tensor(run.traj.R.reshape(-1, n, 3))
    E, F = prior_energy_forces(pri, Rs, rep_cutoff=6.0)
    assert np.allclose(run.traj.F.reshape(-1, n, 3), F.numpy(), atol=1e-9)
    assert np.allclose(run.traj.E.reshape(-1), E.numpy(), atol=1e-9)
    moved = np.linalg.norm(run.traj.R[-1] - R[:3], axis=-1).max()
    assert moved > 1.0  # the list had to be rebuilt on the way


@pytest.mark.parametrize("torsions", ["smooth", "angle"])
@pytest.mark.parametrize("damp", [True, False])
def test_fused_md_forces_equal_autograd(torsions, damp):
    """The fused MD evaluation (one pass per geometric kind) equals autograd through priors + FeatureNet."""
    from cg.analytic_forces import FusedForces

    pri, R, bonds = _priors(damp)
    torch.manual_seed(2)
    net = FeatureNet(6, bonds, hidden=16, layers=2, reference=R, torsions=torsions).double()
    with torch.no_grad():
        for p in net.mlp.parameters():
            p.normal_()
    pot = CGPotential(pri, net, [f"B{k}" for k in range(6)], np.full(6, 40.0), bonds)
    x = torch.as_tensor(R[:48] + np.random.default_rng(5).normal(scale=0.3, size=R[:48].shape))
    x[:2, 3] = 0.5 * (x[:2, 2] + x[:2, 4]) + 0.02  # near-collinear beads: damped torsions
    E, F = FusedForces.for_potential(pot)(x)
    Ea, Fa = _autograd(pot, x)
    assert torch.allclose(E, Ea, rtol=1e-10, atol=1e-8)
    assert torch.allclose(F, Fa, rtol=0, atol=1e-9 * Fa.abs().max().item())
    assert FusedForces.for_potential(CGPotential(pri, SchNetCG(np.zeros(6, int)), ["B"] * 6, np.ones(6), bonds)) is None
