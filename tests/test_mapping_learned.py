"""Learned mappings: valid hard maps, reproducible under a seed; repair; decoder and alignment physics."""
from __future__ import annotations

import numpy as np
import pytest

import cg
from cg.linear_decoder import LinearDecoder, align_frames, reconstruction_rmsd
from cg.repair import refine_assignment, repair_assignment
from forcefield.geometry import random_rotation


def _assert_valid(m, n_atoms, n_beads):
    assert m.n_beads == n_beads
    counts = np.bincount(np.concatenate(m.beads), minlength=n_atoms)
    assert (counts == 1).all(), "every atom exactly once"
    assert all(len(b) > 0 for b in m.beads)
    assert m.is_connected()
    m.check(complete=True, connected=True)


@pytest.mark.parametrize("n_beads, kw", [(4, {}), (6, {"united_atoms": False, "decoder": "linear"}),
                                         (3, {"decoder": "equivariant", "init": "random", "hard": False})])
def test_learned_map_valid_and_deterministic(ala_md, n_beads, kw, tmp_path):
    args = dict(epochs=8, batch_size=64, seed=5, progress=False, **kw)
    m1 = cg.learn_mapping(ala_md, n_beads, **args)
    m2, hist = cg.learn_mapping(ala_md, n_beads, return_history=True, **args)
    _assert_valid(m1, ala_md.n_atoms, n_beads)
    assert [b.tolist() for b in m1.beads] == [b.tolist() for b in m2.beads]
    assert np.allclose(m1.history["loss"], hist["loss"])
    assert len(hist["loss"]) == 8 and np.isfinite(hist["loss"]).all()
    fin = hist["final"]
    assert fin["recon_rmsd_val"] > 0 and fin["mapped_force_norm"] > 0
    if kw.get("united_atoms", True):  # every hydrogen stays with the heavy atom it is bonded to
        a = m1.assignment()
        for i, j in m1.atom_bonds:
            if (ala_md.z[i] == 1) != (ala_md.z[j] == 1):
                assert a[i] == a[j]
    back = cg.Mapping.load(m1.save(tmp_path / "learned.json"))
    assert [b.tolist() for b in back.beads] == [b.tolist() for b in m1.beads]


def test_learning_beats_a_bad_map_and_refinement_helps(ala_md):
    """The learned 3-bead map reconstructs better than a poor valid map with the same bead count."""
    R = ala_md.R
    m = cg.learn_mapping(ala_md, 3, epochs=10, batch_size=64, seed=0, progress=False)
    bonds = m.atom_bonds
    # a poor but valid united-atom 3-bead map: the ACE methyl, the ACE carbonyl, everything else
    poor = cg.Mapping.from_indices([[0, 1, 2, 3], [4, 5], list(range(6, 22))], m.atom_masses, atom_bonds=bonds)
    poor.check()
    r_learned = reconstruction_rmsd(m, R[:150], R[150:])["test"]
    r_poor = reconstruction_rmsd(poor, R[:150], R[150:])["test"]
    assert r_learned < r_poor
    # refinement only ever lowers the loss and keeps the map valid
    A, _, _ = align_frames(R[:150])

    def loss(a):
        C = np.zeros((3, 22))
        C[a, np.arange(22)] = m.atom_masses
        C /= C.sum(1, keepdims=True)
        X = np.einsum("kn,mnd->mkd", C, A)
        return float(((LinearDecoder.fit(X, A)(X) - A) ** 2).sum(-1).mean())

    a0 = poor.assignment()
    a1, l1, moves = refine_assignment(a0, bonds, loss, max_sweeps=5)
    assert moves >= 1 and l1 < loss(a0)
    cg.Mapping.from_indices([np.flatnonzero(a1 == k) for k in range(3)], m.atom_masses, atom_bonds=bonds).check()


def test_repair_fixes_disconnected_and_empty_beads():
    bonds = np.array([[i, i + 1] for i in range(7)])  # a chain of 8 atoms
    assign = np.array([0, 0, 1, 1, 0, 1, 1, 1])  # bead 0 in two pieces, bead 2 empty
    score = np.zeros((3, 8))
    score[2, 7] = 5.0  # atom 7 prefers bead 2
    out = repair_assignment(assign, score, bonds)
    m = cg.Mapping.from_indices([np.flatnonzero(out == k) for k in range(3)], np.ones(8), atom_bonds=bonds)
    m.check()
    assert out[7] == 2


def test_alignment_and_decoder_are_rotation_invariant(ala_md):
    rng = np.random.default_rng(0)
    R = ala_md.R[:60]
    Rrot = np.stack([r @ random_rotation(rng).T + rng.normal(size=3) for r in R])
    A1, ref1, _ = align_frames(R)
    A2, ref2, _ = align_frames(Rrot)
    from forcefield.geometry import aligned_rmsd

    assert aligned_rmsd(ref1, ref2) < 1e-6
    mp = cg.Mapping.from_indices([list(range(0, 8)), list(range(8, 16)), list(range(16, 22))], np.ones(22))
    r1 = reconstruction_rmsd(mp, R[:40], R[40:])
    r2 = reconstruction_rmsd(mp, Rrot[:40], Rrot[40:])
    assert abs(r1["train"] - r2["train"]) < 1e-6 and abs(r1["test"] - r2["test"]) < 1e-6
    # a map with one bead per atom reconstructs exactly
    assert reconstruction_rmsd(cg.Mapping.from_indices([[i] for i in range(22)], np.ones(22)), R[:40], R[40:])["test"] < 1e-6


def test_learn_with_force_provider_and_universe(ala_md, ala_pdb):
    """Forces may come from a provider (kernel force field stand-in) when the data has none; Universe input."""
    ds = ala_md.subset(slice(0, 80))
    ds.F = None
    R0 = ala_md.R[0]

    class FakeKernel:
        def predict(self, R):
            return np.zeros(len(R)), -4.0 * (R - R0)

    m = cg.learn_mapping(ds, 3, epochs=3, batch_size=40, forces=FakeKernel(), rho=1e-3, progress=False, seed=1,
                         val_fraction=0.0)
    m.check()
    want = np.linalg.norm(m.map_forces(-4.0 * (ds.R - R0)), axis=-1).mean()
    assert np.isclose(m.history["final"]["mapped_force_norm"], want)
    u = ala_md.subset(slice(0, 80)).to_universe(str(ala_pdb))
    mu = cg.learn_mapping(u.atoms, 3, epochs=3, batch_size=40, progress=False, seed=1, restarts=2)
    mu.check()
    assert mu.atom_names[:3] == ["CH3", "H1", "H2"] and mu.history["final"]["restart"] in (0, 1)


def test_expected_squared_force_matches_sampling():
    """The noise-free force regulariser equals the Monte Carlo average over sampled hard assignments."""
    import torch

    from cg.autoencoder import expected_squared_force

    g = torch.Generator().manual_seed(0)
    F = torch.randn(5, 7, 3, generator=g, dtype=torch.float64) * 10.0
    P = torch.softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), 0)
    exact = float(expected_squared_force(P, F))
    draws = torch.multinomial(P.T, 200000, replacement=True, generator=g)  # (7, S) bead of each group
    A = torch.nn.functional.one_hot(draws.T, 3).permute(0, 2, 1).to(F.dtype)  # (S, beads, groups)
    mc = float((torch.einsum("skg,bgd->sbkd", A, F) ** 2).sum(-1).mean())
    assert abs(mc - exact) < 0.01 * exact
