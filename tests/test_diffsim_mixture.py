"""cg.diffsim: particle types (mixtures, partial RDFs), table sets and temperature-dependent potentials."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cg.diffsim.ensemble import Ensemble, State, sample_all
from cg.diffsim.fit import DiffSimFitter
from cg.diffsim.md import PairTable, Simulation
from cg.diffsim.observables import RDF, type_pairs
from cg.diffsim.potentials import (EntropicPairPotential, LennardJones, TypedPairPotential, load_model, save_model)
from forcefield.errors import InputError
from fdcheck import assert_grads_match_fd


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _zero_set(k: int, n: int = 64) -> PairTable:
    z = torch.zeros(k, n, dtype=torch.float64)
    return PairTable(0.5, 2.5, z, z.clone())


def test_partial_rdfs_of_ideal_gas_mixture_are_one():
    """Non-interacting binary mixture (30 % / 70 %): every partial g_ab(r) and the total g(r) are 1."""
    rdf = RDF(2.5, 50)
    st = State(0.4, 1.0, n_particles=200, replicas=3, composition=(0.3, 0.7))
    assert list(st.type_counts()) == [60, 140] and st.name == "rho0.4_T1_x0.3"
    out = sample_all(_zero_set(4), [st], rdf, n_equil=100, n_prod=500, observe_every=20, seed=3)
    gp, g = out["g_partial"][0], out["g"][0]
    assert gp.shape == (3, 50) and type_pairs(2) == [(0, 0), (0, 1), (1, 1)]
    sel = rdf.r > 0.5
    for c in range(3):
        assert abs(gp[c, sel].mean() - 1.0) < 0.04, (c, gp[c, sel].mean())
    assert abs(g[sel].mean() - 1.0) < 0.03
    # the total g(r) is the pair-number-weighted mean of the partials
    n0, n1 = 60, 140
    w = np.array([n0 * (n0 - 1) / 2, n0 * n1, n1 * (n1 - 1) / 2])
    assert np.allclose((w[:, None] * gp).sum(0) / w.sum(), g, atol=1e-10)


def test_table_sets_pick_rows_per_type_pair_and_per_system():
    """Energies with a table set equal those of the single tables: per type pair (mixture) and per system."""
    lj, soft = LennardJones(learnable=False), LennardJones(0.5, 1.2, learnable=False)
    typed = TypedPairPotential({(0, 0): lj, (0, 1): soft, (1, 1): lj})
    tab = typed.table(create_graph=False)
    assert tab.n_tables == 4
    types = np.array([0] * 50 + [1] * 50)
    sim = Simulation(100, [0.4], [1.0], cutoff=2.5, seed=1, types=types)
    E, _ = sim.energy(tab)
    # reference: all pairs by hand
    x = sim.x[0]
    i, j = torch.triu_indices(100, 100, 1)
    d = x[j] - x[i]
    d = d - sim.box[0] * torch.round(d / sim.box[0])
    r = d.norm(dim=-1)
    cross = torch.as_tensor(types[i.numpy()] != types[j.numpy()])
    ref = torch.where(cross, soft(r), lj(r)).sum()
    assert abs(float(E[0] - ref)) < 1e-4
    # per-system blocks: system 0 with LJ, system 1 without interactions
    sim2 = Simulation(64, [0.3, 0.3], [1.0], cutoff=2.5, seed=2)
    both = PairTable.stack([lj.table(create_graph=False), _zero_set(1, 2048)])
    E2, _ = sim2.energy(both, table_index=[0, 1])
    E_lj, _ = sim2.energy(lj.table(create_graph=False))
    assert abs(float(E2[0] - E_lj[0])) < 1e-10 and float(E2[1]) == 0.0 and float(E_lj[1]) != 0.0
    with pytest.raises(InputError, match="rows"):
        sim2.energy(_zero_set(3, 2048), table_index=[0, 1])


def test_gradient_with_two_types_matches_finite_differences():
    """d(loss on partial RDFs after 30 steps)/d(parameters of the cross potential): backprop vs differences."""
    rdf = RDF(1.6, 16, sigma=0.1)
    wts = torch.linspace(-1.0, 1.0, 3 * 16, dtype=torch.float64).reshape(3, 16)

    def loss_of(log_eps, log_sigma):
        cross = LennardJones(r_cut=1.6, r_on=1.3)
        with torch.no_grad():
            cross.log_eps.copy_(log_eps)
            cross.log_sigma.copy_(log_sigma)
        pot = TypedPairPotential({(0, 0): LennardJones(learnable=False, r_cut=1.6, r_on=1.3), (0, 1): cross,
                                  (1, 1): LennardJones(0.5, 0.9, learnable=False, r_cut=1.6, r_on=1.3)})
        sim = Simulation(24, [0.2], [1.0], cutoff=rdf.reach, dt=0.004, friction=1.0, skin=0.2, seed=7,
                         types=[0, 1] * 12)
        acc = []
        t = sim.types.reshape(-1)
        sim.run(pot.table(256), 30, observe=lambda s, x, v, pd: acc.append(rdf.partial_from_pairs(pd, sim.volume, t, 2)),
                observe_every=3, grad=True)
        return (torch.stack(acc).mean(0)[0] * wts).sum(), cross

    base = (torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.02, dtype=torch.float64))
    loss, cross = loss_of(*base)
    loss.backward()
    grads = [float(cross.log_eps.grad), float(cross.log_sigma.grad)]
    assert_grads_match_fd(loss_of, base, grads)


def test_entropic_potential_is_linear_in_temperature_and_round_trips(tmp_path):
    torch.manual_seed(0)
    pot = EntropicPairPotential(t_ref=1.5, epsilon=0.9, sigma=1.05, hidden=16, s_hidden=8, n_basis=12, t_scale=0.5)
    with torch.no_grad():
        for p in pot.entropy.mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    r = np.linspace(0.9, 2.4, 60)
    u1, u2, u3 = (pot.evaluate(r, T)[0] for T in (1.0, 1.5, 2.0))
    assert np.allclose(u2, pot.energy.evaluate(r)[0], atol=1e-6)  # at t_ref u = e_ref
    assert np.allclose(u1 + u3, 2 * u2, atol=1e-6) and np.abs(u3 - u1).max() > 1e-3
    assert np.allclose(u1 - u3, pot.s(r), atol=1e-5)  # u(T) = e_ref - (T - t_ref) s
    tabs = pot.state_tables([1.0, 2.0], create_graph=False)
    assert isinstance(tabs, list) and len(tabs) == 2
    save_model(pot, tmp_path / "e.pt")
    back = load_model(tmp_path / "e.pt")
    assert back.temperature_dependent and np.allclose(back.evaluate(r, 2.0)[0], u3, atol=1e-10)
    typed = TypedPairPotential({(0, 0): LennardJones(), (0, 1): LennardJones(0.5), (1, 1): LennardJones(2.0, 0.9)})
    save_model(typed, tmp_path / "t.pt")
    t2 = load_model(tmp_path / "t.pt")
    assert abs(t2.pair(1, 0).epsilon - 0.5) < 1e-12 and abs(t2.pair(1, 1).sigma - 0.9) < 1e-12
    with pytest.raises(InputError, match="every type pair"):
        TypedPairPotential({(0, 0): LennardJones(), (1, 1): LennardJones()})


def test_fit_two_temperatures_and_two_compositions():
    """One optimisation step each: an entropic potential on two temperatures (per-state tables, gradients reach
    the entropy network) and a typed potential on partial RDFs of two compositions simulated at once."""
    rdf = RDF(2.5, 25)
    states = [State(0.3, T, target=np.ones(25), n_particles=100, replicas=1) for T in (1.0, 2.0)]
    pot = EntropicPairPotential(t_ref=1.5, hidden=8, s_hidden=8, n_basis=8)
    f = DiffSimFitter(pot, states, rdf, tau=20, equil_steps=20, lr=0.01)
    f.step()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pot.entropy.parameters())
    assert set(f.history[-1]["mae"]) == {s.name for s in states}
    mix = [State(0.3, 1.2, target=np.ones((3, 25)), n_particles=100, replicas=1, composition=x)
           for x in ((0.5, 0.5), (0.25, 0.75))]
    typed = TypedPairPotential({(0, 0): LennardJones(), (0, 1): LennardJones(0.8), (1, 1): LennardJones(0.6)})
    f2 = DiffSimFitter(typed, mix, rdf, tau=20, equil_steps=20, lr=0.01)
    rec = f2.step()
    assert len(rec["mae"]) == 2 and all(np.isfinite(list(rec["mae"].values())))
    assert float(typed.pair(0, 1).log_eps.grad.abs()) > 0
    ens = f2.ensemble
    counts = ens.groups[0][0].types.sum(1).tolist()  # type-1 particles per system
    assert counts == [50, 75]
    with pytest.raises(InputError, match="partial RDFs"):
        DiffSimFitter(typed, [State(0.3, 1.2, target=np.ones((2, 25)), composition=(0.5, 0.5))], rdf)
    with pytest.raises(InputError, match="composition"):
        State(0.3, 1.2, composition=(-1.0, 2.0))
    assert Ensemble(mix, rdf).n_types == 2
