"""The CG model's domain of validity (cg.domain): a gate over the CG torsions from the reference frames.

Checks: the gate is 1 where the reference has frames and 0 where it has none; its analytic gradient equals
autograd's; it is invariant to rotations and translations; gated potentials give the same forces on every
path (autograd, fast, fused MD); the gate switches off a network well outside the reference's support (the
model there is its priors) and never lowers the energy; save/load keeps it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cg.domain import TorsionDomain, gate_network
from cg.potential import CGPotential, FeatureNet
from cg.priors import Priors, dihedral_quads, torsions


def _build(phis: np.ndarray, bond: float = 3.8, angle_deg: float = 110.0, seed: int = 0,
           noise: float = 0.0) -> np.ndarray:
    """Bead chains (M, n, 3) from torsions (M, n-3) (rad): bonds ± ``noise`` Å, angles ± 0.03 rad (NeRF)."""
    rng = np.random.default_rng(seed)
    M, nq = phis.shape
    n = nq + 3
    R = np.zeros((M, n, 3))
    th = np.radians(angle_deg) + rng.normal(0, 0.03, size=(M, n))
    L = bond + noise * rng.normal(size=(M, n))
    R[:, 1, 0] = L[:, 1]
    R[:, 2] = R[:, 1] + L[:, 2, None] * np.stack([-np.cos(th[:, 0]), np.sin(th[:, 0]), np.zeros(M)], 1)
    for k in range(3, n):
        a, b, c = R[:, k - 3], R[:, k - 2], R[:, k - 1]
        bc = (c - b) / np.linalg.norm(c - b, axis=1, keepdims=True)
        nrm = np.cross(b - a, bc)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        m = np.stack([bc, np.cross(nrm, bc), nrm], 1)
        t, p = th[:, k], phis[:, k - 3]
        d = L[:, k, None] * np.stack([-np.cos(t), np.sin(t) * np.cos(p), np.sin(t) * np.sin(p)], 1)
        R[:, k] = c + np.einsum("mij,mi->mj", m, d)
    return R


def _reference(M: int = 3000, seed: int = 0) -> np.ndarray:
    """Chains of 6 beads whose three torsions stay near -60° (von Mises, κ = 8): nothing near +120°."""
    rng = np.random.default_rng(seed)
    return _build(rng.vonmises(math.radians(-60.0), 8.0, size=(M, 3)), seed=seed, noise=0.05)


BONDS = np.array([[k, k + 1] for k in range(5)])


def test_builder_makes_the_torsions_it_is_given():
    phis = np.radians([[-60.0, 30.0, 150.0], [100.0, -170.0, 5.0]])
    got = torsions(torch.as_tensor(_build(phis)), torch.as_tensor(dihedral_quads(BONDS))).numpy()
    assert np.allclose(got, phis, atol=1e-9)


def test_gate_is_one_inside_and_zero_outside_the_reference():
    dom = TorsionDomain.fit(_reference(), dihedral_quads(BONDS))
    inside = torch.as_tensor(_build(np.radians([[-60.0, -70.0, -50.0]])))
    g_in = float(dom(inside))
    assert g_in == pytest.approx(1.0, abs=1e-12)
    for k in range(3):  # one torsion alone moved to +120° (where the reference has no frame) closes the gate
        phi = np.radians([[-60.0, -60.0, -60.0]])
        phi[0, k] = math.radians(120.0)
        assert float(dom(torch.as_tensor(_build(phi)))) == 0.0
    # along a scan away from the support the gate falls monotonically from 1 to 0
    scan = np.radians(np.stack([np.full(61, -60.0), np.full(61, -60.0), np.linspace(-60.0, 120.0, 61)], 1))
    g = dom(torch.as_tensor(_build(scan))).numpy()
    assert g[0] == pytest.approx(1.0) and g[-1] == 0.0
    assert np.all(np.diff(g) <= 1e-12)
    assert 0.0 < g[(g > 0) & (g < 1)].size  # a smooth transition, not a step


def test_gate_threshold_follows_the_fraction_of_frames():
    """Raising ``hi`` (the fraction per bin where the network acts fully) shrinks the domain."""
    R = _reference()
    q = dihedral_quads(BONDS)
    scan = torch.as_tensor(_build(np.radians(np.stack([np.full(91, -60.0)] * 2 + [np.linspace(-60, 120, 91)], 1))))
    wide, narrow = TorsionDomain.fit(R, q, hi=1e-4)(scan), TorsionDomain.fit(R, q, hi=1e-2)(scan)
    assert torch.all(narrow <= wide + 1e-12) and float((wide - narrow).max()) > 0.5


def test_gate_gradient_equals_autograd_and_is_invariant():
    from cg.analytic_forces import torsion_fwd
    from cg.priors import torsion_components

    dom = TorsionDomain.fit(_reference(), dihedral_quads(BONDS))
    rng = np.random.default_rng(3)
    x = torch.as_tensor(_build(rng.uniform(-math.pi, math.pi, size=(200, 3))))
    x[:2, 3] = 0.5 * (x[:2, 2] + x[:2, 4]) + 0.01  # beads 2-3-4 nearly on a line: still smooth
    c, s, _ = torsion_fwd(x, dom.quads)
    g, gc, gs = dom.gate_grad(c, s)
    cg_ = c.clone().requires_grad_(True)
    sg_ = s.clone().requires_grad_(True)
    ga = dom.gate_per_torsion(cg_, sg_).prod(-1)
    ac, as_ = torch.autograd.grad(ga.sum(), (cg_, sg_))
    mixed = (g > 1e-3) & (g < 1 - 1e-3)
    assert mixed.sum() > 10  # the comparison covers the transition, where the gradient is not zero
    assert torch.allclose(g, ga.detach(), atol=1e-12)
    assert torch.allclose(gc, ac, atol=1e-9 * ac.abs().max()) and torch.allclose(gs, as_, atol=1e-9 * as_.abs().max())
    assert torch.isfinite(gc).all() and torch.isfinite(gs).all()
    # rotation + translation leave the gate unchanged; the (c, s) form and forward() agree
    Q, _ = torch.linalg.qr(torch.as_tensor(rng.normal(size=(3, 3))))
    assert torch.allclose(dom(x @ Q.T + torch.tensor([1.0, -2.0, 3.0], dtype=x.dtype)), dom(x), atol=1e-12)
    assert torch.allclose(dom(x), dom.gate_per_torsion(*torsion_components(x, dom.quads)).prod(-1), atol=1e-12)


class _Well(nn.Module):
    """A 'network' with a deep spurious well at torsion 3 = +120° (where the reference has no frames)."""

    config = {"kind": "test"}

    def forward(self, x):
        phi = torsions(x.double(), torch.tensor([[2, 3, 4, 5]]))[:, 0]
        return -30.0 * torch.exp(4.0 * (torch.cos(phi - math.radians(120.0)) - 1.0)) + 0.0 * x.sum((1, 2))


def _gated_potential(R):
    pri = Priors.fit(R, BONDS, 300.0)
    pot = CGPotential(pri, _Well(), [f"B{k}" for k in range(6)], np.full(6, 40.0), BONDS)
    info = gate_network(pot, R)
    return pot, pri, info


def test_gate_removes_a_spurious_well_and_never_lowers_the_energy():
    R = _reference()
    pot, pri, info = _gated_potential(R)
    assert info["domain_frames_outside"] < 0.01
    scan = torch.as_tensor(_build(np.radians(np.stack([np.full(73, -60.0)] * 2 + [np.linspace(-180, 180, 73)], 1))))
    with torch.no_grad():
        E_gated = pot(scan)
        pot.set_domain(None)
        E_raw = pot(scan)
        E_prior = pri(scan)
    phi = np.linspace(-180, 180, 73)
    # ungated, the well at +120° is the global minimum of the scan; gated, the minimum is in the support
    assert abs(phi[int(E_raw.argmin())] - 120.0) <= 10.0
    assert abs(phi[int(E_gated.argmin())] + 60.0) <= 30.0
    # outside the support the gated model is its priors exactly (up to the constant offset, which is 0 here)
    far = np.abs(phi - 120.0) <= 20.0
    assert torch.allclose(E_gated[far], E_prior[far], atol=1e-9)
    # the gate never lowers the energy: g (U - c) >= U - c wherever U <= c
    c = info["domain_offset"]
    assert torch.all(E_gated >= E_raw - c - 1e-9)


def test_gated_forces_agree_on_every_path_and_survive_save_load(tmp_path):
    from cg.analytic_forces import FusedForces

    R = _reference()
    pri = Priors.fit(R, BONDS, 300.0)
    torch.manual_seed(0)
    net = FeatureNet(6, BONDS, hidden=16, layers=2, reference=R).double()
    with torch.no_grad():
        for p in net.mlp.parameters():
            p.normal_()
    pot = CGPotential(pri, net, [f"B{k}" for k in range(6)], np.full(6, 40.0), BONDS)
    gate_network(pot, R)
    rng = np.random.default_rng(4)
    x = torch.as_tensor(_build(rng.vonmises(math.radians(-60.0), 1.5, size=(128, 3)), noise=0.05))
    g = pot.domain(x)
    assert ((g > 1e-3) & (g < 1 - 1e-3)).sum() > 3
    Ea, Fa = pot.energy_forces(x)
    Ef, Ff = pot.fast_energy_forces(x)
    Eu, Fu = FusedForces.for_potential(pot)(x)
    tol = 1e-9 * Fa.abs().max().item()
    assert torch.allclose(Ef, Ea, atol=1e-8) and torch.allclose(Ff, Fa, atol=tol)
    assert torch.allclose(Eu, Ea, atol=1e-8) and torch.allclose(Fu, Fa, atol=tol)
    # forces are -∇E: a central finite difference along a random direction
    d = torch.as_tensor(rng.normal(size=x.shape))
    h = 1e-5
    with torch.no_grad():
        fd = (pot(x + h * d) - pot(x - h * d)) / (2 * h)
    an = -(Fa * d).sum((1, 2))
    assert float((fd - an).abs().max()) < 1e-5 * float(an.abs().max()), float((fd - an).abs().max())
    pot.save(str(tmp_path / "p.pt"))
    back = CGPotential.load(str(tmp_path / "p.pt"))
    assert back.domain is not None
    with torch.no_grad():  # the loaded network is float32 (as every saved one): float tolerance
        assert torch.allclose(back(x), Ea, rtol=1e-4, atol=1e-3)
        assert torch.equal(back.domain(x), g)


def test_gate_works_with_message_passing_networks():
    """The gate wraps any network: a SchNet potential's fast path (autograd net + analytic gate) equals
    autograd through the whole gated potential, and the neighbour-list MD path uses the gate too."""
    from cg.md import RepulsionNeighbours, _fast_force_fn
    from cg.potential import SchNetCG

    R = _reference(M=1500)
    pri = Priors.fit(R, BONDS, 300.0)
    torch.manual_seed(1)
    pot = CGPotential(pri, SchNetCG(np.zeros(6, int), hidden=8, n_rbf=6, n_interactions=1).double(),
                      [f"B{k}" for k in range(6)], np.full(6, 40.0), BONDS)
    gate_network(pot, R)
    x = torch.as_tensor(_build(np.random.default_rng(2).vonmises(math.radians(-60.0), 1.5, size=(32, 3)), noise=0.05))
    Ea, Fa = pot.energy_forces(x)
    Ef, Ff = pot.fast_energy_forces(x)
    assert torch.allclose(Ef, Ea, atol=1e-8) and torch.allclose(Ff, Fa, atol=1e-8 * float(Fa.abs().max()))
    nl = RepulsionNeighbours(pot.priors, cutoff=30.0, skin=2.0)
    En, Fn = _fast_force_fn(pot, torch.float64, nl)(x)
    assert torch.allclose(En, Ea, atol=1e-8) and torch.allclose(Fn, Fa, atol=1e-8 * float(Fa.abs().max()))


def test_exported_openmm_module_keeps_the_gate(tmp_path):
    """The openmm-torch export traces the gated energy: the loaded module equals the gated potential (units
    converted), including where the gate is between 0 and 1."""
    from cg.export import export_torchscript

    R = _reference(M=1500)
    pri = Priors.fit(R, BONDS, 300.0)
    torch.manual_seed(3)
    net = FeatureNet(6, BONDS, hidden=16, layers=2, reference=R)
    with torch.no_grad():
        for p in net.mlp.parameters():
            p.normal_()
    pot = CGPotential(pri, net, [f"B{k}" for k in range(6)], np.full(6, 40.0), BONDS)
    gate_network(pot, R)
    x = _build(np.random.default_rng(5).vonmises(math.radians(-60.0), 1.5, size=(40, 3)), noise=0.05)
    g = pot.domain(torch.as_tensor(x)).numpy()
    assert ((g > 1e-3) & (g < 1 - 1e-3)).any() and (g < 1e-3).any()
    mod = torch.jit.load(str(export_torchscript(pot, tmp_path / "cg.pt", example=R[0])))
    for frame in x:
        E_ref, F_ref = pot.energy_forces(torch.as_tensor(frame[None]))
        xn = torch.as_tensor(frame / 10.0).requires_grad_(True)
        E = mod(xn)
        (gr,) = torch.autograd.grad(E, xn)
        assert float(E) == pytest.approx(float(E_ref[0]) * 4.184, rel=1e-6, abs=1e-6)
        assert torch.allclose(-gr, F_ref[0] * 41.84, atol=1e-5 * float(F_ref.abs().max()) * 41.84)
