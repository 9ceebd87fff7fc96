"""Protein CG priors: Boltzmann inversion recovers the parameters of an exactly sampled Cα-like chain; repulsion
respects the chain's exclusions; empty or degenerate histograms fail with the term's name and frame count."""
from __future__ import annotations

import numpy as np
import pytest

from cg.priors import Priors
from forcefield.errors import InputError
from forcefield.units import kT

T = 300.0
KT = kT(T)


def _sample(rng, M, logp, lo, hi):
    """M exact draws from the density exp(logp) on [lo, hi] by inverting its CDF on a fine grid."""
    x = np.linspace(lo, hi, 200_001)
    p = np.exp(logp(x) - logp(x).max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
    return np.interp(rng.random(M) * cdf[-1], cdf, x)


def _nerf_chain(r, th, phi):
    """Chain positions (M, n, 3) from bond lengths r (M, n-1), angles th (M, n-2), torsions phi (M, n-3)."""
    M, nb = r.shape
    X = np.zeros((M, nb + 1, 3))
    X[:, 1, 0] = r[:, 0]
    X[:, 2] = X[:, 1] + r[:, 1, None] * np.stack([-np.cos(th[:, 0]), np.sin(th[:, 0]), 0 * th[:, 0]], 1)
    for k in range(3, nb + 1):
        a, b, c = X[:, k - 3], X[:, k - 2], X[:, k - 1]
        bc = (c - b) / np.linalg.norm(c - b, axis=1, keepdims=True)
        n = np.cross(b - a, bc)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        m = np.cross(n, bc)
        t, p = th[:, k - 2], phi[:, k - 3]
        X[:, k] = c + r[:, k - 1, None] * (-np.cos(t)[:, None] * bc + (np.sin(t) * np.cos(p))[:, None] * m
                                           + (np.sin(t) * np.sin(p))[:, None] * n)
    return X


@pytest.fixture(scope="module")
def chain():
    """7-bead chain with its own k, r0 per bond, k, θ0 per angle and a Fourier potential per torsion, sampled
    exactly from U = Σ k_b/2 (r-r0)^2 + Σ k_a/2 (θ-θ0)^2 + Σ a1 cos φ + b2 sin 2φ (independent internal
    coordinates with the Jacobians r^2 and sin θ)."""
    rng = np.random.default_rng(7)
    M, n = 100_000, 7
    kb = np.array([60.0, 90.0, 120.0, 150.0, 80.0, 110.0])
    r0 = np.array([3.80, 3.82, 3.78, 3.85, 3.81, 3.79])
    ka = np.array([8.0, 12.0, 16.0, 20.0, 10.0])
    t0 = np.radians([95.0, 105.0, 115.0, 125.0, 100.0])
    a1 = np.array([0.8, -0.5, 0.3, 0.6])
    b2 = np.array([-0.4, 0.5, 0.2, -0.3])
    r = np.stack([_sample(rng, M, lambda x, k=k, c=c: 2 * np.log(x) - k * (x - c) ** 2 / (2 * KT), 3.0, 4.6)
                  for k, c in zip(kb, r0)], 1)
    th = np.stack([_sample(rng, M, lambda x, k=k, c=c: np.log(np.sin(x)) - k * (x - c) ** 2 / (2 * KT), 0.3, 3.0)
                   for k, c in zip(ka, t0)], 1)
    phi = np.stack([_sample(rng, M, lambda x, a=a, b=b: -(a * np.cos(x) + b * np.sin(2 * x)) / KT, -np.pi, np.pi)
                    for a, b in zip(a1, b2)], 1)
    X = _nerf_chain(r, th, phi)
    return X, dict(kb=kb, r0=r0, ka=ka, t0=t0, a1=a1, b2=b2), n


def test_priors_recover_a_sampled_chain(chain):
    X, p, n = chain
    bonds = np.array([[i, i + 1] for i in range(n - 1)])
    pri = Priors.fit(X, bonds, T, n_fourier=4)
    assert pri.bond_idx.tolist() == bonds.tolist()
    np.testing.assert_allclose(pri.bond_k.numpy(), p["kb"], rtol=0.04)
    np.testing.assert_allclose(pri.bond_r0.numpy(), p["r0"], atol=3e-3)
    assert pri.angle_idx.tolist() == [[i, i + 1, i + 2] for i in range(n - 2)]
    np.testing.assert_allclose(pri.angle_k.numpy(), p["ka"], rtol=0.04)
    np.testing.assert_allclose(pri.angle_t0.numpy(), p["t0"], atol=np.radians(0.5))
    assert pri.dih_idx.tolist() == [[i, i + 1, i + 2, i + 3] for i in range(n - 3)]
    a, b = pri.dih_a.numpy(), pri.dih_b.numpy()
    np.testing.assert_allclose(a[:, 0], p["a1"], atol=0.04)
    np.testing.assert_allclose(b[:, 1], p["b2"], atol=0.04)
    assert np.abs(np.c_[a[:, 1:], b[:, :1], b[:, 2:]]).max() < 0.04  # no spurious harmonics


def test_repulsion_uses_the_chain_exclusions(chain):
    """Repulsion acts on pairs three or more bonds apart (1-2, 1-3 excluded, as Mapping.exclusions lists them),
    with σ the closest approach; U(σ) = kT."""
    import torch

    import cg

    X, _, n = chain
    X = X[:2000]
    m = cg.Mapping.from_indices([[i] for i in range(n)], np.ones(n), bead_bonds=[[i, i + 1] for i in range(n - 1)])
    pri = Priors.fit(X, m.bonds, T, n_fourier=2)
    assert sorted(map(tuple, pri.rep_idx.tolist())) == sorted(map(tuple, m.nonbonded_pairs.tolist()))
    assert not set(map(tuple, pri.rep_idx.tolist())) & set(map(tuple, m.exclusions.tolist()))
    i, j = pri.rep_idx[0].tolist()
    assert pri.rep_sigma[0].item() == pytest.approx(np.linalg.norm(X[:, j] - X[:, i], axis=1).min())
    # energy of that one pair placed at σ, all else removed: kT
    x = torch.zeros(1, n, 3, dtype=torch.float64)
    x[0, :, 0] = torch.arange(n, dtype=torch.float64) * 100.0
    x[0, j, 0] = x[0, i, 0] + pri.rep_sigma[0]
    d = (x[0, pri.rep_idx[:, 1]] - x[0, pri.rep_idx[:, 0]]).norm(dim=-1)
    near = d < 50.0
    assert near.sum() == 1
    assert pri.terms(x)["repulsion"].item() == pytest.approx(KT, rel=1e-6, abs=1e-6)


def test_empty_and_degenerate_histograms_name_the_term(chain):
    X, _, n = chain
    bonds = np.array([[i, i + 1] for i in range(n - 1)])
    names = ["GLY", "TYR", "ASP", "PRO", "GLU", "THR", "GLY"]
    with pytest.raises(InputError, match=r"bond 0-1 \(GLY-TYR\): 5 frames; a harmonic prior needs at least 10"):
        Priors.fit(X[:5], bonds, T, names=names)
    with pytest.raises(InputError, match="no frames"):
        Priors.fit(X[:0], bonds, T)
    rigid = X[:50].copy()
    d = rigid[:, 3] - rigid[:, 2]
    rigid[:, 3] = rigid[:, 2] + 3.8 * d / np.linalg.norm(d, axis=1, keepdims=True)  # a constrained bond
    rigid[:, 4:] += (rigid[:, 3] - X[:50, 3])[:, None]
    with pytest.raises(InputError, match=r"bond 2-3: the same value 3.8 in all 50 frames: a degenerate histogram"):
        Priors.fit(rigid, bonds, T)
    bad = X[:50].copy()
    bad[17, 5] = bad[17, 4]  # two beads on top of each other: angle undefined in frame 17
    with pytest.raises(InputError, match=r"angle 3-4-5 \(PRO-GLU-THR\): value at frame 17 is not finite"), \
            np.errstate(invalid="ignore"):
        Priors.fit(bad, bonds, T, names=names, repulsion=False)
