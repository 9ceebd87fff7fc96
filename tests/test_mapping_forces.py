"""Mapped forces: the conditional mean of the mapped force is minus the gradient of the exact PMF.

System: atoms joined by harmonic springs with a weak tether, U = ½ Σ_axes r^T K r, sampled exactly from its
Boltzmann distribution (a Gaussian with covariance kT K⁻¹). For a linear map X = C r the CG free energy is
A(X) = ½ X^T (C K⁻¹ C^T)⁻¹ X (per axis), so the mean force -∇A is linear in X; since (X, f) are jointly
Gaussian, the conditional mean E[f | X] is the least-squares linear regression of f on X.
"""
from __future__ import annotations

import numpy as np
import pytest

import cg
from cg.forces import as_force_provider, consistency_error
from forcefield.errors import InputError
from forcefield.units import kT

N = 7
MASSES = np.array([12.0, 1.0, 16.0, 14.0, 1.0, 12.0, 32.0])


def spring_matrix(rng):
    K = np.zeros((N, N))
    pairs = [(i, i + 1) for i in range(N - 1)] + [(0, 2), (3, 6), (1, 5)]
    for i, j in pairs:
        k = rng.uniform(5.0, 80.0)  # kcal/mol/Å²
        K[i, i] += k
        K[j, j] += k
        K[i, j] -= k
        K[j, i] -= k
    return K + 0.5 * np.eye(N)


def sample(K, M, T, rng):
    L = np.linalg.cholesky(np.linalg.inv(K) * kT(T))
    r = np.einsum("ij,mjd->mid", L, rng.standard_normal((M, N, 3)))
    return r, -np.einsum("ij,mjd->mid", K, r)


def exact_mean_force_matrix(C, K):
    """-(C K^-1 C^T)^-1: the mean force is this matrix times X (per axis)."""
    return -np.linalg.inv(C @ np.linalg.inv(K) @ C.T)


def regress(X, f):
    """Least-squares B with f ≈ B X, pooling frames and axes."""
    Xs = X.transpose(0, 2, 1).reshape(-1, X.shape[1])
    fs = f.transpose(0, 2, 1).reshape(-1, f.shape[1])
    B, *_ = np.linalg.lstsq(Xs, fs, rcond=None)
    return B.T


@pytest.mark.parametrize("beads, weighting", [
    ([[0, 1, 2], [3, 4], [5, 6]], "com"),     # complete, non-overlapping centre-of-mass map
    ([[0, 1, 2], [3, 4], [5, 6]], "cog"),
    ([[0, 2], [3], [6]], "com"),              # atoms 1, 4, 5 in no bead (as the "ca" preset)
])
def test_mapped_force_is_mean_force(beads, weighting):
    rng = np.random.default_rng(11)
    K = spring_matrix(rng)
    m = cg.Mapping.from_indices(beads, MASSES, weighting=weighting)
    C, W = m.matrix(), m.force_matrix()
    assert consistency_error(C, W) < 1e-12
    want = exact_mean_force_matrix(C, K)
    for T in (150.0, 600.0):  # the mean force of a harmonic system does not depend on T
        r, F = sample(K, 40000, T, rng)
        B = regress(m.map_positions(r), m.map_forces(F))
        assert np.abs(B - want).max() < 0.05 * np.abs(want).max(), (B, want)
        # a naive map, the mass-weighted *average* force of each bead, is not the mean force
        naive = regress(m.map_positions(r), np.einsum("kn,mnd->mkd", C, F))
        if any(len(b) > 1 for b in beads):
            assert np.abs(naive - want).max() > 0.2 * np.abs(want).max()


def test_mean_force_by_binning_bead_distance():
    """Without regression: bin the bead separation d and average the force conjugate to it per bin.

    For two beads along x, the PMF of d = X0 - X1 is A(d) = kT d² / (2 var(d)), so the mean force
    conjugate to d, E[(f0 - f1) / 2 | d], must be -kT d / var(d).
    """
    rng = np.random.default_rng(3)
    K = spring_matrix(rng)
    m = cg.Mapping.from_indices([[0, 1, 2, 3], [4, 5, 6]], MASSES)
    T = 300.0
    r, F = sample(K, 200000, T, rng)
    X, f = m.map_positions(r), m.map_forces(F)
    d = X[:, 0, 0] - X[:, 1, 0]
    Sig = m.matrix() @ np.linalg.inv(K) @ m.matrix().T * kT(T)  # exact covariance of the bead x-coordinates
    var_d = Sig[0, 0] + Sig[1, 1] - 2 * Sig[0, 1]
    edges = np.quantile(d, np.linspace(0.05, 0.95, 10))
    rel = 0.5 * (f[:, 0, 0] - f[:, 1, 0])
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (d >= a) & (d < b)
        want = -kT(T) * d[sel].mean() / var_d
        assert abs(rel[sel].mean() - want) < 0.05 * kT(T) * np.abs(edges).max() / var_d


def test_force_provider_forms():
    R = np.random.default_rng(0).normal(size=(3, 5, 3))

    class KFF:
        def predict(self, R):
            return np.zeros(len(R)), -2.0 * R

    for obj in (lambda R: -2.0 * R, lambda R: (None, -2.0 * R), KFF()):
        assert np.allclose(as_force_provider(obj)(R), -2.0 * R)
    with pytest.raises(ValueError, match="shape"):
        as_force_provider(lambda R: R[:, :2])(R)


@pytest.mark.parametrize("beads", [[[0, 1, 2], [3, 4], [5, 6]], [[0, 2], [3], [6]]])
def test_optimal_force_map_is_mean_force_with_less_noise(beads, tmp_path):
    """The statistically optimal force map (fitted on one sample) keeps the exact mean force on a fresh
    sample and lowers the noise around it below that of the plain per-bead sum."""
    rng = np.random.default_rng(5)
    K = spring_matrix(rng)
    m = cg.Mapping.from_indices(beads, MASSES, weighting="com")
    r_fit, F_fit = sample(K, 20000, 300.0, rng)
    mo = m.with_optimal_forces(F_fit)
    C, W = mo.matrix(), mo.force_matrix()
    assert consistency_error(C, W) < 1e-9
    assert np.allclose(mo.map_positions(r_fit), m.map_positions(r_fit))  # same beads
    want = exact_mean_force_matrix(C, K)
    r, F = sample(K, 40000, 300.0, rng)
    X = m.map_positions(r)
    B = regress(X, mo.map_forces(F))
    assert np.abs(B - want).max() < 0.05 * np.abs(want).max(), (B, want)
    noise = lambda f: np.sqrt(((f - np.einsum("kl,mld->mkd", want, X)) ** 2).mean())  # noqa: E731
    assert noise(mo.map_forces(F)) < 0.9 * noise(m.map_forces(F))
    # saved with the mapping; an inconsistent force map is refused with a clear error
    back = cg.Mapping.load(mo.save(tmp_path / "m.json"))
    assert np.allclose(back.force_matrix(), W)
    with pytest.raises(InputError, match="not consistent"):
        cg.Mapping(beads=m.beads, atom_masses=MASSES, force_weights=np.ones((3, N)))


@pytest.mark.parametrize("beads, pairs", [([[0, 1, 2], [3, 4], [5, 6]], [(0, 1), (3, 4)]),
                                          ([[0, 2], [3], [6]], [(2, 1), (4, 3)])])  # Cα-like: 1, 4 in no bead
def test_optimal_force_map_with_constraints_cancels_constraint_forces(beads, pairs):
    """With constrained pairs the optimal map gives both atoms of a pair one weight per bead: it stays
    consistent and gives the exact mean force, constraint forces (equal and opposite along any direction)
    leave the mapped forces unchanged, and the noise is still below the plain sum's."""
    rng = np.random.default_rng(11)
    K = spring_matrix(rng)
    m = cg.Mapping.from_indices(beads, MASSES, weighting="com")
    r_fit, F_fit = sample(K, 20000, 300.0, rng)
    free = m.with_optimal_forces(F_fit)
    mc = m.with_optimal_forces(F_fit, constrained=np.array(pairs))
    C, W = mc.matrix(), mc.force_matrix()
    assert consistency_error(C, W) < 1e-9
    for i, j in pairs:
        np.testing.assert_allclose(W[:, i], W[:, j], atol=1e-12)
    r, F = sample(K, 40000, 300.0, rng)
    X = m.map_positions(r)
    want = exact_mean_force_matrix(C, K)
    assert np.abs(regress(X, mc.map_forces(F)) - want).max() < 0.05 * np.abs(want).max()
    G = np.zeros_like(F)  # constraint forces: +g on i, -g on j, random per frame
    for i, j in pairs:
        g = 30.0 * rng.standard_normal((len(F), 3))
        G[:, i] += g
        G[:, j] -= g
    np.testing.assert_allclose(mc.map_forces(F + G), mc.map_forces(F), atol=1e-9)
    assert np.abs(free.map_forces(F + G) - free.map_forces(F)).max() > 1.0  # the free map would see them
    noise = lambda f: np.sqrt(((f - np.einsum("kl,mld->mkd", want, X)) ** 2).mean())  # noqa: E731
    assert noise(mc.map_forces(F)) < 0.95 * noise(m.map_forces(F))
    assert noise(free.map_forces(F)) <= noise(mc.map_forces(F)) * 1.01  # fewer free weights: no better
    with pytest.raises(InputError, match="outside"):
        m.with_optimal_forces(F_fit, constrained=np.array([(0, 9)]))
