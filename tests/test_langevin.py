"""The shared BAOAB Langevin integrator samples the Boltzmann distribution of a harmonic oscillator."""
from __future__ import annotations

import numpy as np
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
