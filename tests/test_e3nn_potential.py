"""e3nn equivariant CG potential and cutoff graphs: e3nn's assert_equivariant, forces = -∇E, permutations,
mirror images, smooth cutoff, save/load, a short force-matching fit; dense and cell-list graphs agree."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant

from cg.nets import EquivariantCG, radius_graph
from cg.potential import CGPotential, build_potential
from cg.priors import Priors
from cg.train import train_force_matching

@contextlib.contextmanager
def default_dtype(dtype):
    """e3nn builds its constants (Clebsch-Gordan, Wigner D generators) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


SMALL = dict(hidden_irreps="8x0e + 4x0o + 4x1o + 4x1e", lmax=2, n_layers=2, cutoff=6.0, n_rbf=6,
             radial_hidden=8, readout_hidden=8, avg_neighbours=4.0)
NAMES = ["A", "B", "A", "C", "B", "A", "C"]


def _net(chiral=True, seed=0, dtype=torch.float64, **kw):
    """A small network built in ``dtype`` (e3nn's Clebsch-Gordan constants are made in the default dtype,
    so a float64 test network is built under a float64 default)."""
    torch.manual_seed(seed)
    types = np.unique(NAMES, return_inverse=True)[1]
    with default_dtype(dtype):
        net = EquivariantCG(types, chiral=chiral, **{**SMALL, **kw})
    with torch.no_grad():  # a non-trivial network (the readout starts near zero)
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def _frames(rng, B=3, n=7):
    """Random chains with 1.5-4 Å steps (all within the cutoff of a few neighbours)."""
    steps = rng.normal(size=(B, n, 3))
    steps *= (rng.uniform(1.5, 4.0, (B, n, 1)) / np.linalg.norm(steps, axis=-1, keepdims=True))
    return torch.tensor(np.cumsum(steps, 1))


def _energy_forces(net):
    def f(x):
        x = x.detach().requires_grad_(True)
        E = net(x)
        (g,) = torch.autograd.grad(E.sum(), x)
        return E[:, None].detach(), -g.detach()
    return f


@pytest.mark.parametrize("chiral", [True, False])
def test_assert_equivariant_energy_forces(rng, chiral):
    """Energy invariant and forces rotating with the frame (rotations, translations; and reflections when
    the network is not chiral), checked by e3nn's own helper."""
    net = _net(chiral)
    x = _frames(rng)
    E, F = _energy_forces(net)(x)
    assert E.abs().max() > 1e-2 and F.abs().max() > 1e-2  # a network that really depends on x
    with default_dtype(torch.float64):
        errs = assert_equivariant(_energy_forces(net), args_in=[x], irreps_in=["cartesian_points"],
                                  irreps_out=["0e", "1o"], do_parity=not chiral, tolerance=1e-9, ntrials=2)
    assert (0, True) in errs  # translations were tested
    if chiral:  # the mirror image has another energy; rotations alone leave it unchanged
        assert (net(-x) - net(x)).abs().max() > 1e-4
    else:
        assert torch.allclose(net(-x), net(x), atol=1e-10)


def test_forces_are_minus_gradient_and_same_type_permutation(rng):
    pri = Priors.fit(_frames(rng, 40).numpy(), np.array([[i, i + 1] for i in range(6)]), 300.0, n_fourier=2)
    pot = build_potential(pri, NAMES, np.full(7, 12.0), np.array([[i, i + 1] for i in range(6)]), network="e3nn", **SMALL)
    pot.net.load_state_dict(_net().float().state_dict())
    pot.double()
    x = _frames(rng)
    E, F = pot.energy_forces(x)
    h = 1e-5
    for b, i, d in [(0, 0, 0), (1, 3, 2), (2, 6, 1), (0, 4, 1)]:
        xp, xm = x.clone(), x.clone()
        xp[b, i, d] += h
        xm[b, i, d] -= h
        fd = -(pot(xp)[b] - pot(xm)[b]) / (2 * h)
        assert F[b, i, d].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-8)
    # beads 0, 2 and 5 share type "A": permuting them permutes the network forces, keeps the energy
    net = pot.net
    perm = [5, 1, 0, 3, 4, 2, 6]
    En, Fn = _energy_forces(net)(x)
    Ep, Fp = _energy_forces(net)(x[:, perm])
    assert torch.allclose(Ep, En, atol=1e-10) and torch.allclose(Fp, Fn[:, perm], atol=1e-10)
    # ...but swapping beads of different types changes it
    assert (net(x[:, [1, 0, 2, 3, 4, 5, 6]]) - net(x)).abs().max() > 1e-4


def test_energy_is_smooth_at_the_cutoff(rng):
    """A pair crossing the cutoff changes the energy continuously (envelope), although the graph changes."""
    net = _net()
    c = SMALL["cutoff"]
    x = torch.zeros(2, 7, 3, dtype=torch.float64)
    x[:, :, 0] = torch.arange(7) * 20.0  # isolated beads
    x[:, 1] = x[:, 0] + torch.tensor([0.3, 0.8, 0.5], dtype=torch.float64)
    x[0, 1] *= (c - 1e-7) / x[0, 1].norm()
    x[1, 1] *= (c + 1e-7) / x[1, 1].norm()
    assert radius_graph(x, c).n_edges == 2  # only the pair inside the cutoff (both directions)
    E = net(x)
    assert (E[0] - E[1]).abs() < 1e-9
    x2 = x[:1].clone()
    x2[0, 1] *= 0.6  # well inside: a real interaction energy
    assert (net(x2)[0] - E[1]).abs() > 1e-4


def _brute(x, cutoff):
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
    b, i, j = np.nonzero((d < cutoff) & ~np.eye(x.shape[1], dtype=bool))
    n = x.shape[1]
    return sorted(zip((b * n + j).tolist(), (b * n + i).tolist()))


def test_dense_and_cell_list_graphs_agree(rng):
    """Random-walk chains of 600 beads: the cell list finds exactly the pairs inside the cutoff, and so does
    the dense builder; excluded pairs are dropped in both directions."""
    x = np.cumsum(rng.normal(size=(2, 600, 3)) * 2.0, 1)
    xt = torch.tensor(x)
    ref = _brute(x, 5.0)
    for method in ("cells", "dense"):
        g = radius_graph(xt, 5.0, method=method)
        assert sorted(zip(g.src.tolist(), g.dst.tolist())) == ref
    assert len(ref) < 0.05 * 2 * 600 * 599  # sparse: far fewer edges than all pairs
    excl = np.array([[i, i + 1] for i in range(599)])
    g = radius_graph(xt, 5.0, exclude=excl, method="cells")
    s, d = g.src.numpy() % 600, g.dst.numpy() % 600
    assert not np.any(np.abs(s - d) == 1)
    n_close = int((np.linalg.norm(x[:, 1:] - x[:, :-1], axis=-1) < 5.0).sum())
    assert n_close > 100 and g.n_edges == len(ref) - 2 * n_close  # those pairs, both directions, removed


def test_save_load_round_trip(rng, tmp_path):
    pot = build_potential(None, NAMES, np.full(7, 12.0), np.array([[i, i + 1] for i in range(6)]), network="e3nn",
                          exclude=np.array([[0, 1]]), **SMALL)
    src = _net(dtype=torch.float32).state_dict()
    pot.net.load_state_dict({k: v for k, v in src.items() if k != "stack.exclude"}, strict=False)
    pot.save(tmp_path / "p.pt")
    back = CGPotential.load(tmp_path / "p.pt")
    x = _frames(rng).float()
    assert back.net.config == pot.net.config
    E, F = pot.energy_forces(x)
    E2, F2 = back.energy_forces(x)
    assert torch.equal(E, E2) and torch.equal(F, F2)


def test_force_matching_fit_lowers_the_loss(rng, one_torch_thread):
    """Three beads with Morse pair forces plus noise: a short fit more than halves the force error."""
    M = 200
    x = np.zeros((M, 3, 3))
    x[:, 1, 0] = 2.0 + rng.normal(0, 0.15, M)
    th = rng.uniform(1.6, 2.4, M)
    r2 = 2.0 + rng.normal(0, 0.15, M)
    x[:, 2, 0] = x[:, 1, 0] - r2 * np.cos(th)
    x[:, 2, 1] = r2 * np.sin(th)
    xt = torch.tensor(x, requires_grad=True)
    i, j = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2])
    d = (xt[:, j] - xt[:, i]).norm(dim=-1)
    E = (3.0 * (1 - torch.exp(-1.5 * (d - torch.tensor([2.0, 2.0, 3.2], dtype=torch.float64)))) ** 2).sum()
    (g,) = torch.autograd.grad(E, xt)
    F = -g.numpy() + rng.normal(0, 0.3, x.shape)
    torch.manual_seed(0)
    pot = build_potential(None, ["A", "B", "A"], np.full(3, 12.0), np.array([[0, 1], [1, 2]]), network="e3nn",
                          **{**SMALL, "cutoff": 5.0, "avg_neighbours": 2.0})
    res = train_force_matching(pot, x, F, epochs=10, batch_size=32, lr=1e-2, patience=10, progress=False)
    assert res.best_val_rmse < 0.5 * res.prior_val_rmse
