"""The shared BAOAB Langevin integrator samples the Boltzmann distribution of a harmonic oscillator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from forcefield.langevin import simulate
from forcefield.units import KB_KCAL


def test_harmonic_oscillator_distribution_and_temperature():
    k, T, m = 2.0, 300.0, 12.0  # kcal/mol/Å², K, amu
    B, N = 64, 4

    def force_fn(x):
        return 0.5 * k * (x**2).sum((1, 2)), -k * x

    traj = simulate(force_fn, torch.zeros(B, N, 3, dtype=torch.float64), torch.full((N,), m, dtype=torch.float64),
                    n_steps=4000, save_every=10, dt_fs=2.0, temperature=T, friction_per_ps=10.0, seed=3,
                    progress=False)
    x = traj.R[100:].reshape(-1)
    var_expected = KB_KCAL * T / k
    assert abs(x.var() / var_expected - 1) < 0.05
    assert abs(x.mean()) < 0.02
    # mean potential energy = (3N/2) kT by equipartition
    assert abs(traj.E[100:].mean() / (1.5 * N * KB_KCAL * T) - 1) < 0.05


def test_instability_stops_replica_and_keeps_frames():
    def force_fn(x):
        return (x**2).sum((1, 2)), torch.zeros_like(x)

    def check(x):
        return x[:, 0, 0].abs() > 0.5  # stretched "bond"

    x0 = torch.zeros(3, 2, 3, dtype=torch.float64)
    x0[1, 0, 0] = 10.0  # replica 1 starts past the threshold
    traj = simulate(force_fn, x0, torch.ones(2, dtype=torch.float64), n_steps=20, save_every=2, dt_fs=0.1,
                    temperature=1.0, check_fn=check, progress=False)
    assert traj.n_valid[1] == 0 and traj.n_valid[0] == 10 and traj.n_valid[2] == 10
    assert [s[0] for s in traj.stopped] == [1]
    assert np.isfinite(traj.R[:, 0]).all()


def _double_well(h: float = 4.0, a: float = 0.3, k: float = 2.0):
    """U = h (x² − 1)² + a x + k/2 (y² + z²) per particle (kcal/mol, Å): barrier h at x = 0, wells at x ≈ ±1."""
    def force_fn(x):
        X, Y = x[..., 0], x[..., 1:]
        E = (h * (X * X - 1.0) ** 2 + a * X).sum(1) + 0.5 * k * (Y * Y).sum((1, 2))
        F = torch.cat([(-4.0 * h * X * (X * X - 1.0) - a)[..., None], -k * Y], -1)
        return E, F

    def p_right(T):  # exact Boltzmann probability of x > 0
        xs = np.linspace(-3, 3, 60001)
        w = np.exp(-(h * (xs * xs - 1.0) ** 2 + a * xs) / (KB_KCAL * T))
        return w[xs > 0].sum() / w.sum()
    return force_fn, p_right


def test_replica_exchange_in_batch_samples_the_target_temperature():
    """Batched temperature ladders: frames saved at the target temperature follow its Boltzmann distribution
    across a barrier of ~7 kT, which plain MD from one well does not cross in the same time."""
    from forcefield.remd import TemperatureLadders, geometric_temperatures

    force_fn, p_right = _double_well()
    T = geometric_temperatures(300.0, 1500.0, 4)
    n_ladders, m = 16, torch.full((1,), 4.0, dtype=torch.float64)
    x0 = torch.zeros(n_ladders * 4, 1, 3, dtype=torch.float64)
    x0[..., 0] = -1.0  # every walker starts in the left well
    ex = TemperatureLadders(T, n_ladders, every=20, seed=1)
    traj = simulate(force_fn, x0, m, n_steps=12000, save_every=20, dt_fs=2.0, friction_per_ps=20.0, seed=2,
                    progress=False, exchange=ex)
    assert traj.temperature is not None and set(np.unique(traj.temperature)) == set(T)
    # every saved frame has exactly n_ladders walkers at each temperature
    assert (np.sort(traj.temperature, 1) == np.repeat(T, n_ladders)[None]).all()
    x = np.concatenate([traj.R[traj.at_temperature(b, T[0]), b, 0] for b in range(len(x0))])
    x = x[len(x) // 5:]
    assert abs((x[:, 0] > 0).mean() - p_right(300.0)) < 0.05
    assert abs((x[:, 1:] ** 2).mean() / (KB_KCAL * 300.0 / 2.0) - 1) < 0.08  # harmonic y, z at 300 K
    acc = ex.acceptance
    assert ((acc > 0.05) & (acc < 1.0)).all()
    plain = simulate(force_fn, x0[:16], m, n_steps=6000, save_every=20, dt_fs=2.0, friction_per_ps=20.0,
                     temperature=300.0, seed=2, progress=False)
    assert (plain.R[..., 0, 0] > 0).mean() < 0.5 * p_right(300.0)  # trapped: the exchange did the work


def test_per_replica_temperatures_and_mass_repartitioning():
    """One temperature per replica gives each its own equipartition; repartitioned masses keep the total."""
    from forcefield.elements import masses, repartitioned_masses
    from forcefield.geometry import covalent_bonds

    k, B, N = 2.0, 32, 4
    T = np.where(np.arange(B) % 2 == 0, 200.0, 600.0)

    def force_fn(x):
        return 0.5 * k * (x**2).sum((1, 2)), -k * x

    traj = simulate(force_fn, torch.zeros(B, N, 3, dtype=torch.float64), torch.full((N,), 12.0, dtype=torch.float64),
                    n_steps=4000, save_every=10, dt_fs=2.0, temperature=T, friction_per_ps=10.0, seed=4,
                    progress=False)
    for t in (200.0, 600.0):
        var = traj.R[100:, T == t].var()
        assert abs(var / (KB_KCAL * t / k) - 1) < 0.06
    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.universe import elements_of, open_universe

    u = open_universe(alanine_dipeptide_pdb())
    z, R = elements_of(u.atoms), u.atoms.positions.astype(float)
    m = repartitioned_masses(z, covalent_bonds(R, z), 3.0)
    assert m.sum() == pytest.approx(masses(z).sum()) and np.allclose(m[z == 1], 3.0)
    assert m[0] == pytest.approx(masses(z)[0] - 3 * (3.0 - masses(z)[1]))  # ACE CH3 carbon gave its 3 H's mass
