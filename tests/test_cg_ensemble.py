"""Ensembles of CG feature networks: the merged network is the members' mean; the recipe trains and merges."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cg.nets.ensemble import merge_feature_nets
from cg.potential import CGPotential, build_potential


def _chain(rng, M=200, n=6):
    return np.cumsum(rng.normal(size=(M, n, 3)) * 0.3 + np.array([1.4, 0, 0]), axis=1)


def _members(X, k, seed=0):
    bonds = np.array([[i, i + 1] for i in range(X.shape[1] - 1)])
    nets = []
    for s in range(k):
        torch.manual_seed(seed + s)
        net = build_potential(None, list("ABCDEF")[:X.shape[1]], np.full(X.shape[1], 12.0), bonds,
                              network="features", reference=X, hidden=16, layers=3).net
        with torch.no_grad():  # members far from their (near-zero) initial output layer
            for p in net.mlp.parameters():
                p.add_(0.3 * torch.randn_like(p))
        nets.append(net)
    return bonds, nets


def test_merged_net_is_the_members_mean_and_round_trips(rng, tmp_path):
    X = _chain(rng)
    bonds, nets = _members(X, 3)
    merged = merge_feature_nets(nets)
    assert merged.config["hidden"] == 48
    x = torch.tensor(X[:20], dtype=torch.float32)
    with torch.no_grad():
        E_mean = torch.stack([n(x) for n in nets]).mean(0)
    F_mean = torch.stack([n.energy_forces(x)[1] for n in nets]).mean(0)
    E, F = merged.energy_forces(x)  # analytic forces of the merged MLP
    assert torch.allclose(merged(x), E_mean, atol=1e-5 * float(E_mean.abs().max()))
    assert torch.allclose(E, E_mean, atol=1e-5 * float(E_mean.abs().max()))
    assert torch.allclose(F, F_mean, atol=1e-5 * float(F_mean.abs().max()))
    # members differ (the test would pass trivially if they did not)
    assert float((nets[0](x) - nets[1](x)).abs().max()) > 1e-2
    pot = CGPotential(None, merged, list("ABCDEF"), np.full(6, 12.0), bonds)
    pot.save(str(tmp_path / "ens.pt"))
    back = CGPotential.load(str(tmp_path / "ens.pt"))
    assert torch.allclose(back.fast_energy_forces(x.double())[1], pot.fast_energy_forces(x.double())[1], atol=1e-6)
    assert merge_feature_nets(nets[:1]) is nets[0]


def test_merge_refuses_members_of_other_systems(rng):
    X = _chain(rng)
    _, nets = _members(X, 1)
    _, other = _members(X + rng.normal(0, 0.5, X.shape), 1)  # other reference frames: other feature scaling
    with pytest.raises(ValueError, match="feature scaling"):
        merge_feature_nets(nets + other)
    with pytest.raises(ValueError):
        merge_feature_nets([])


def test_fit_cg_model_ensemble_trains_members_and_merges(rng):
    """Two members from different seeds: the ensemble's validation force RMSE is at most the RMS of the
    members' (the mean of two predictions cannot be farther from the data than their average error)."""
    from cg import Mapping
    from cg.forcematching import ForceMatchingConfig, fit_cg_model
    from forcefield.dataset import Dataset

    M, n = 400, 4
    X = _chain(rng, M, n)
    F = -0.8 * (X - X.mean(1, keepdims=True)) + rng.normal(0, 0.3, X.shape)
    mp = Mapping.from_indices([[i] for i in range(n)], np.full(n, 12.0), "com",
                              atom_bonds=np.array([[i, i + 1] for i in range(n - 1)]))
    ds = Dataset(R=X, z=np.full(n, 6), F=F, E=np.zeros(M))
    cfg = ForceMatchingConfig(network="features", hidden=16, layers=2, epochs=4, patience=4, ensemble=2,
                              domain_gate=False, min_prior_frames=10 ** 6)
    model = fit_cg_model(mp, ds, cfg, seed=3, progress=False)
    a, b = model.info["member_val_rmse"]
    assert a != b and model.info["ensemble"] == 2 and model.potential.net.config["hidden"] == 32
    assert model.info["best_val_rmse"] <= np.sqrt((a * a + b * b) / 2) + 1e-6
    with pytest.raises(Exception, match="features"):
        fit_cg_model(mp, ds, ForceMatchingConfig(network="schnet", ensemble=2, epochs=1), progress=False)
