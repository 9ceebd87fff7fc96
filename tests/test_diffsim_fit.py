"""cg.diffsim potentials, IBI and DiffSim fitting (reduced LJ units)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cg.diffsim.ensemble import State, sample_rdf
from cg.diffsim.fit import DiffSimFitter, lj_guess_from_rdf
from cg.diffsim.ibi import ibi
from cg.diffsim.observables import RDF
from cg.diffsim.potentials import (LennardJones, NeuralPairPotential, TabulatedPotential, load_model, read_table,
                                   save_model, write_table)
from forcefield.errors import InputError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_neural_potential_smooth_cutoff_and_forces():
    torch.manual_seed(0)
    pot = NeuralPairPotential(prior="lj", epsilon=0.8, sigma=1.05, hidden=16, n_basis=12)
    with torch.no_grad():  # a non-trivial network
        for p in pot.mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    r = torch.linspace(0.9, 2.6, 400, dtype=torch.float64).requires_grad_(True)
    u = pot(r)
    (du,) = torch.autograd.grad(u.sum(), r)
    u = u.detach()
    assert float(u[r > 2.5].abs().max()) == 0.0
    # u and du/dr go to 0 continuously at the cutoff
    near = (r > 2.49) & (r < 2.5)
    assert float(u[near].abs().max()) < 1e-4 and float(du[near].abs().max()) < 1e-2
    # the MD table reproduces the potential and its derivative
    tab = pot.table(create_graph=False)
    ut, dut = tab(r.detach())
    assert torch.allclose(ut, u.detach(), atol=1e-5)
    assert torch.allclose(dut, du, atol=1e-3)


def test_model_and_table_round_trips(tmp_path):
    torch.manual_seed(1)
    pot = NeuralPairPotential(prior="repulsive", epsilon=1.2, sigma=0.9, hidden=8, n_basis=8, layers=1)
    with torch.no_grad():
        pot.mlp[-1].weight.normal_()
    save_model(pot, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    r = np.linspace(0.8, 2.5, 50)
    assert np.allclose(back.evaluate(r)[0], pot.evaluate(r)[0], atol=1e-10)
    lj = LennardJones(0.7, 1.1)
    save_model(lj, tmp_path / "lj.pt")
    assert abs(load_model(tmp_path / "lj.pt").epsilon - 0.7) < 1e-12
    for ext in ("npz", "csv"):
        write_table(pot, tmp_path / f"t.{ext}", n=801)
        tab = read_table(tmp_path / f"t.{ext}")
        rr = np.linspace(0.85, 2.45, 77)
        assert np.allclose(tab.evaluate(rr)[0], pot.evaluate(rr)[0], atol=2e-4)
        save_model(tab, tmp_path / f"tab_{ext}.pt")
        assert np.allclose(load_model(tmp_path / f"tab_{ext}.pt").evaluate(rr)[0], tab.evaluate(rr)[0])
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="format"):
        write_table(pot, tmp_path / "t.txt")


def test_ibi_reaches_fixed_point_for_dilute_gas():
    """Dilute gas: g = exp(-u/kT) exactly, so the true potential is IBI's fixed point. Starting from the true u
    plus a bump of 0.6 kT, IBI removes the bump and g(r) then matches the target."""
    T, rdf = 1.5, RDF(2.5, 50)
    true = LennardJones(learnable=False)
    u_true, _ = true.evaluate(rdf.r)
    target = np.exp(-u_true / T)
    bump = 0.6 * T * np.exp(-((rdf.r - 1.5) / 0.25) ** 2)
    states = [State(0.03, T, target=target, n_particles=64, replicas=6)]
    res = ibi(states, rdf, n_iter=4, equil_steps=100, prod_steps=600, observe_every=5, smooth=1, seed=0,
              u_init=u_true + bump, progress=False)
    well = (res.r > 1.0) & (res.r < 2.2)
    u_fin, _ = true.evaluate(res.r)
    err0 = np.abs(bump[(rdf.r >= res.r[0]) & (rdf.r < 2.5)][well]).mean()
    err = np.abs(res.u[well] - u_fin[well]).mean()
    assert err < 0.35 * err0, (err, err0)
    # g(r) of the first iterate (with the bump) is visibly off; the last measured one is not
    assert res.history[-1]["mae"][states[0].name] < 0.6 * res.history[0]["mae"][states[0].name]


def _lj_targets(states, rdf, seed=1):
    true = LennardJones(learnable=False).table(create_graph=False)
    g = sample_rdf(true, states, rdf, n_equil=300, n_prod=1500, seed=seed)
    return g


def test_diffsim_recovers_lj_quick(tmp_path):
    """Reduced LJ recovery: LJ with learnable eps, sigma started at (0.6, 1.1) is pulled towards (1, 1) by
    DiffSim on the rho=0.5, T=1.2 target (sigma, which sets the structure at this state, converges; the loss
    falls); checkpoint/resume continues the same run."""
    rdf = RDF(2.5, 50, sigma=0.05)
    g = _lj_targets([State(0.5, 1.2, n_particles=128, replicas=2)], rdf)
    states = [State(0.5, 1.2, target=g[0], n_particles=128, replicas=2)]
    pot = LennardJones(0.6, 1.1)
    f = DiffSimFitter(pot, states, rdf, tau=60, lr=0.02, equil_steps=200, seed=0)
    ck = tmp_path / "ck.pt"
    f.fit(12, checkpoint=ck, checkpoint_every=6, progress=False, average_last=0.0)
    # resume in a new fitter from the checkpoint and go on
    pot2 = LennardJones(0.6, 1.1)
    f2 = DiffSimFitter(pot2, states, rdf, tau=60, lr=0.02, equil_steps=200, seed=0)
    f2.fit(18, checkpoint=ck, checkpoint_every=6, progress=False, average_last=0.0)
    assert f2.step_count == 18 and len(f2.history) == 18
    assert f2.history[:12] == f.history[:12]
    f.fit(18, progress=False, average_last=0.0)  # the uninterrupted run ends where the resumed one does
    assert abs(pot.epsilon - pot2.epsilon) < 1e-6 and abs(pot.sigma - pot2.sigma) < 1e-6
    assert abs(pot2.sigma - 1.0) < 0.5 * abs(1.1 - 1.0), pot2.sigma
    first = np.mean([h["loss"] for h in f2.history[:3]])
    last = np.mean([h["loss"] for h in f2.history[-3:]])
    assert last < 0.5 * first


def test_initial_guess_and_bad_input():
    rdf = RDF(2.5, 100)
    u, _ = LennardJones(learnable=False).evaluate(rdf.r)
    eps, sig = lj_guess_from_rdf(rdf.r, np.exp(-u / 1.2), 1.2)
    assert abs(eps - 1.0) < 0.02 and abs(sig - 1.0) < 0.02
    with pytest.raises(InputError, match="100 bins"):
        DiffSimFitter(LennardJones(), [State(0.3, 1.2, target=np.ones(10))], rdf)
    with pytest.raises(InputError):
        State(-0.3, 1.2)
    with pytest.raises(InputError):
        TabulatedPotential(np.array([1.0, 0.9, 1.2, 1.3]), np.zeros(4))


def test_vacf_loss_term():
    """Optional VACF loss: targets carry a VACF; the fitter adds its MSE and back-propagates it."""
    from cg.diffsim.ensemble import sample_observables

    rdf = RDF(2.5, 50)
    st = [State(0.5, 1.2, n_particles=128, replicas=1)]
    g, c = sample_observables(LennardJones(learnable=False).table(create_graph=False), st, rdf, 200, 400,
                              observe_every=2, vacf_lag=10, chunk=200)
    assert c.shape == (1, 10) and abs(c[0, 0] - 1) < 1e-12 and c[0, -1] < c[0, 0]
    states = [State(0.5, 1.2, target=g[0], target_vacf=c[0], n_particles=128)]
    pot = LennardJones(0.7, 1.0)
    f = DiffSimFitter(pot, states, rdf, tau=40, observe_every=2, equil_steps=100, vacf_weight=10.0, lr=0.0)
    f.step()
    assert np.isfinite(f.history[-1]["vacf_loss"]) and f.history[-1]["vacf_loss"] > 0
    assert pot.log_eps.grad is not None and float(pot.log_eps.grad.abs()) > 0
    with pytest.raises(InputError, match="target_vacf"):
        DiffSimFitter(LennardJones(), [State(0.5, 1.2, target=g[0])], rdf, vacf_weight=1.0)


def test_fit_to_pmf_initialises_to_boltzmann_inversion():
    """Dilute limit g = exp(-u/kT): the PMF initialisation (no MD) recovers u, and for u(r; T) = e - T s the
    entropy part from two temperatures."""
    from cg.diffsim.fit import boltzmann_inversion, fit_to_pmf
    from cg.diffsim.potentials import EntropicPairPotential

    rdf = RDF(2.5, 100)
    r = rdf.r
    u_lj, _ = LennardJones(learnable=False).evaluate(r)
    r_b, pmf = boltzmann_inversion(r, np.exp(-u_lj / 1.5), 1.5)
    well = (r_b > 1.0) & (r_b < 2.0)
    assert np.allclose(pmf[well], u_lj[r < 2.5][well], atol=1e-6) and pmf.max() <= 9.0 + 1e-12
    torch.manual_seed(0)
    pot = NeuralPairPotential(prior="lj", epsilon=0.6, sigma=1.05, hidden=16)
    rms = fit_to_pmf(pot, r, {1.5: np.exp(-u_lj / 1.5)}, steps=300)
    sel = (r > 1.0) & (r < 2.3)
    assert rms < 0.1 and np.abs(pot.evaluate(r[sel])[0] - u_lj[sel]).max() < 0.15
    s_true = 0.5 * np.exp(-((r - 1.4) / 0.2) ** 2)  # u(r; T) = u_LJ - T s
    g = {T: np.exp(-(u_lj - T * s_true) / T) for T in (1.0, 2.0)}
    ent = EntropicPairPotential(t_ref=1.5, epsilon=0.9, sigma=1.0, hidden=16, s_hidden=16)
    fit_to_pmf(ent, r, g, steps=400)
    sel = (r > 1.05) & (r < 2.0)
    assert np.abs(ent.s(r[sel]) - s_true[sel]).max() < 0.15, np.abs(ent.s(r[sel]) - s_true[sel]).max()


def test_residual_from_past_uses_earlier_windows_only():
    """residual_from_past: the first step (no earlier window) is the default step; later steps take the residual
    from the earlier windows, so the gradient differs while the simulated trajectory (lr=0) is the same."""
    rdf = RDF(2.5, 50)
    g = _lj_targets([State(0.5, 1.2, n_particles=128)], rdf)
    grads = {}
    for past in (False, True):
        pot = LennardJones(0.8, 1.05)
        f = DiffSimFitter(pot, [State(0.5, 1.2, target=g[0], n_particles=128)], rdf, tau=20, lr=0.0, equil_steps=50,
                          seed=3, residual_momentum=0.5, residual_from_past=past, grad_clip=None)
        grads[past] = []
        for _ in range(2):
            f.step()
            grads[past].append(float(pot.log_eps.grad))
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-12)
    assert grads[True][1] != pytest.approx(grads[False][1], rel=1e-6)
