"""cg.diffsim MD engine and observables: physics checks (reduced LJ units)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cg.diffsim.md import NeighbourList, PairTable, Simulation, energy_forces
from cg.diffsim.observables import RDF, vacf
from cg.diffsim.potentials import LennardJones, lj_energy, smooth_switch
from fdcheck import assert_grads_match_fd


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _all_pairs_energy(x, box, pot):
    """Reference energy by all pairs and the minimum image, straight from the potential (no table)."""
    N = x.shape[0]
    i, j = torch.triu_indices(N, N, 1)
    d = x[j] - x[i]
    d = d - box * torch.round(d / box)
    r = d.norm(dim=-1)
    return pot(r).sum()


def test_table_matches_function_and_forces_are_gradients():
    pot = LennardJones(learnable=False)
    tab = pot.table(create_graph=False)
    r = torch.linspace(0.85, 2.6, 777, dtype=torch.float64)
    u, du = tab(r)
    ref = (lj_energy(r) * smooth_switch(r, 2.2, 2.5)).where(r < 2.5, torch.zeros(()))
    assert torch.allclose(u, ref, atol=2e-6)
    # du is the derivative of the interpolant itself (finite differences of the table energy)
    h = 1e-6
    fd = (tab(r + h)[0] - tab(r - h)[0]) / (2 * h)
    assert torch.allclose(du, fd, atol=1e-4, rtol=1e-6)
    # below the grid the table continues linearly, beyond the cutoff it is zero
    assert float(tab(torch.tensor([0.3], dtype=torch.float64))[0]) > float(tab(torch.tensor([0.5],
                                                                                          dtype=torch.float64))[0])
    assert float(tab(torch.tensor([2.7], dtype=torch.float64))[0]) == 0.0


def test_neighbour_list_forces_match_all_pairs_and_are_gradients():
    pot = LennardJones(learnable=False)
    sim = Simulation(100, [0.4], [1.0], cutoff=2.5, seed=3)
    x = sim.x[0].clone().requires_grad_(True)
    e_ref = _all_pairs_energy(x, sim.box[0], pot)
    (g,) = torch.autograd.grad(e_ref, x)
    nl = NeighbourList(2.5, 0.3)
    nl.build(sim.x, sim.box)
    E, F, _ = energy_forces(sim.x, sim.box, nl, pot.table(create_graph=False))
    assert abs(float(E[0] - e_ref.detach())) < 1e-4
    assert torch.allclose(F[0], -g, atol=1e-3)
    # translating everything (across the periodic boundary) changes nothing
    shift = torch.tensor([1.7, -3.1, 0.4], dtype=torch.float64)
    E2, F2, _ = energy_forces(sim.x + shift, sim.box, nl, pot.table(create_graph=False))
    assert torch.allclose(E2, E, atol=1e-9) and torch.allclose(F2, F, atol=1e-8)


def test_nve_energy_conservation():
    """Velocity Verlet (friction 0): total energy per particle conserved to 2e-3 epsilon over 600 steps at
    dt = 0.005, and the fluctuation shrinks about 4x when dt is halved (second-order integrator)."""
    pot = LennardJones(learnable=False)
    tab = pot.table(create_graph=False)
    spread = {}
    for dt in (0.005, 0.0025):
        sim = Simulation(128, [0.6], [1.0], cutoff=2.5, dt=dt, friction=1.0, seed=1)
        sim.run(tab, 200, grad=False)  # melt the lattice with the thermostat
        sim.friction = 0.0
        e = []
        n = int(round(3.0 / dt))
        for _ in range(10):
            sim.run(tab, n // 10, grad=False)
            U, K = sim.energy(tab)
            e.append(float((U + K)[0]) / sim.N)
        spread[dt] = max(e) - min(e)
    assert spread[0.005] < 2e-3
    assert spread[0.0025] < spread[0.005] / 2.0


def test_rdf_of_ideal_gas_is_one():
    rdf = RDF(2.5, 50)
    gen = torch.Generator().manual_seed(0)
    box = 8.0
    x = torch.rand((12, 300, 3), generator=gen, dtype=torch.float64) * box
    g = rdf.from_positions(x, torch.full((12,), box, dtype=torch.float64)).mean(0).numpy()
    sel = rdf.r > 0.5
    assert abs(g[sel].mean() - 1.0) < 0.02
    assert np.abs(g[sel] - 1.0).max() < 0.15
    # the same through the MD engine: non-interacting particles (zero potential) stay an ideal gas
    zero = PairTable(0.5, 2.5, torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64))
    sim = Simulation(200, [0.4] * 3, [1.0], cutoff=rdf.reach, seed=2)
    sim.run(zero, 200, grad=False)  # scramble the lattice
    acc = []
    sim.run(zero, 300, observe=lambda s, x, v, pd: acc.append(rdf.from_pairs(pd, sim.volume)), observe_every=20,
            grad=False)
    gm = torch.stack(acc).mean((0, 1)).numpy()
    assert abs(gm[sel].mean() - 1.0) < 0.03


def test_langevin_temperature_and_vacf():
    pot = LennardJones(learnable=False)
    tab = pot.table(create_graph=False)
    sim = Simulation(128, [0.5, 0.5], [0.8, 1.6], cutoff=2.5, friction=5.0, seed=4)
    sim.run(tab, 300, grad=False)
    vs, ts = [], []
    sim.run(tab, 300, observe=lambda s, x, v, pd: (vs.append(v), ts.append(2 * sim.kinetic(v) / (3 * 127))),
            grad=False)
    T = torch.stack(ts).mean(0)
    assert torch.allclose(T, torch.tensor([0.8, 1.6], dtype=torch.float64), rtol=0.08)
    c = vacf(torch.stack(vs), 50)
    assert torch.allclose(c[:, 0], torch.ones(2, dtype=torch.float64))
    assert (c[:, 49] < 0.5).all()  # friction 5 decorrelates velocities within 0.25 time units


@pytest.mark.parametrize("thermostat", ["langevin", "nhc"])
def test_gradient_through_simulation_matches_finite_differences(thermostat):
    """d(loss on the smoothed RDF after 30 thermostatted steps)/d(eps, sigma): backprop vs central differences."""
    rdf = RDF(1.6, 16, sigma=0.1)
    weights = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)

    def loss_of(log_eps, log_sigma):
        pot = LennardJones(learnable=True, r_cut=1.6, r_on=1.3)
        with torch.no_grad():
            pot.log_eps.copy_(log_eps)
            pot.log_sigma.copy_(log_sigma)
        sim = Simulation(20, [0.2], [1.0], cutoff=rdf.reach, dt=0.004, friction=1.0, skin=0.2, seed=7,
                         thermostat=thermostat, nhc_tau=0.1)
        acc = []
        sim.run(pot.table(256), 30, observe=lambda s, x, v, pd: acc.append(rdf.from_pairs(pd, sim.volume)),
                observe_every=3, grad=True)
        loss = (torch.stack(acc).mean(0)[0] * weights).sum()
        return loss, pot

    base = (torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.02, dtype=torch.float64))
    loss, pot = loss_of(*base)
    loss.backward()
    grads = [float(pot.log_eps.grad), float(pot.log_sigma.grad)]
    assert_grads_match_fd(loss_of, base, grads)


def test_cell_list_equals_all_pairs():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((2, 1200, 3), generator=gen, dtype=torch.float64) * 12.0 - 3.0  # some outside the box
    box = torch.tensor([12.0, 12.0], dtype=torch.float64)
    a, b = NeighbourList(2.5, 0.3, cell_threshold=1000), NeighbourList(2.5, 0.3, cell_threshold=10 ** 9)
    a.build(x, box)
    b.build(x, box)
    pa = set(zip(a.i.tolist(), a.j.tolist()))
    pb = set(zip(b.i.tolist(), b.j.tolist()))
    assert len(pa) == len(a.i) and pa == pb and len(pa) > 10000


def test_reduced_units_argon():
    from cg.diffsim.units import ReducedUnits

    u = ReducedUnits()  # argon: eps/kB = 119.8 K, sigma = 3.405 Å, m = 39.948 amu
    assert abs(u.temperature_K(1.0) - 119.8) < 0.2
    assert abs(u.temperature_red(u.temperature_K(1.2)) - 1.2) < 1e-12
    assert abs(u.time_fs - 2156.0) < 10.0  # the textbook 2.16 ps
    assert abs(u.density_per_A3(0.3) * 3.405 ** 3 - 0.3) < 1e-12


def test_nose_hoover_chain_temperature_and_conserved_energy():
    """NHC: the extended energy is conserved (deterministic dynamics) and the kinetic temperature relaxes
    to the bath value from a start at twice the temperature."""
    pot = LennardJones(learnable=False)
    tab = pot.table(create_graph=False)
    sim = Simulation(128, [0.6, 0.6], [0.9, 1.5], cutoff=2.5, dt=0.004, thermostat="nhc", nhc_tau=0.3, seed=6)
    sim.v = sim.v * 2 ** 0.5  # start hot
    sim.run(tab, 300, grad=False)
    h0 = sim.conserved_energy(tab)
    ts = []
    sim.run(tab, 600, observe=lambda s, x, v, pd: ts.append(2 * sim.kinetic(v) / sim.n_dof), grad=False)
    h1 = sim.conserved_energy(tab)
    assert float((h1 - h0).abs().max()) / sim.N < 2e-3
    T = torch.stack(ts).mean(0)
    assert torch.allclose(T, torch.tensor([0.9, 1.5], dtype=torch.float64), rtol=0.08), T
