"""Backmapping model: exact equivariance, mapping-aware re-centring, API, files, MDAnalysis round trips, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backmap import Backmapper
from backmap.model import CGVAE, ModelConfig
from cg.mapping import Mapping
from forcefield.elements import masses
from forcefield.errors import InputError
from forcefield.geometry import random_rotation

BEADS3 = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21]]
BEADS6 = [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15], [16, 17, 18, 19, 20, 21]]


def _model(beads, z, weighting, seed=0, n_atoms=22):
    m = Mapping.from_indices(beads, masses(z), weighting=weighting)
    host = m.assignment()
    C = m.matrix()
    # atoms in no bead: attach to bead 0 with zero weight (as the Backmapper does via bonds)
    host = np.where(host < 0, 0, host)
    torch.manual_seed(seed)
    model = CGVAE(ModelConfig(n_atoms=n_atoms, n_beads=len(beads), hidden=24, latent=4), host,
                  C[host, np.arange(n_atoms)]).eval()
    # perturb every parameter so that no layer sits at a symmetric initial value
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m, model


@pytest.fixture(scope="module")
def ala_z(ala_md):
    return ala_md.z


@pytest.mark.parametrize("beads", [BEADS3, BEADS6])
def test_decoder_and_encoder_are_exactly_equivariant(ala_md, beads, rng):
    m, model = _model(beads, ala_md.z, "com")
    R = ala_md.R[:4] - ala_md.R[:4].mean(1, keepdims=True)
    X = m.map_positions(R)
    Q, t = random_rotation(rng), np.array([4.0, -3.0, 6.0])
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    z = torch.randn(4, len(beads), 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.decode(f32(X), z).double().numpy()
        out_rot = model.decode(f32(X @ Q.T + t), z).double().numpy()
        mu, lv = model.encode(f32(R), f32(X))
        mu_r, lv_r = model.encode(f32(R @ Q.T + t), f32(X @ Q.T + t))
        pm, _ = model.prior(f32(X))
        pm_r, _ = model.prior(f32(X @ Q.T + t))
    assert np.abs(out - X[:, m.assignment()]).max() > 0.1  # atoms really placed off their beads
    np.testing.assert_allclose(out_rot, out @ Q.T + t, atol=1e-5)
    np.testing.assert_allclose(mu_r.numpy(), mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(lv_r.numpy(), lv.numpy(), atol=1e-5)
    np.testing.assert_allclose(pm_r.numpy(), pm.numpy(), atol=1e-5)
    # prior samples follow too (same random numbers)
    with torch.no_grad():
        s = model.sample(f32(X), 3, generator=torch.Generator().manual_seed(2)).double().numpy()
        s_rot = model.sample(f32(X @ Q.T + t), 3, generator=torch.Generator().manual_seed(2)).double().numpy()
    np.testing.assert_allclose(s_rot, s @ Q.T + t, atol=1e-5)


def test_decoder_knows_handedness(ala_md):
    """The cross-product channels make the decoder chiral: a mirrored CG input is not decoded as the mirror
    image (a purely E(3)-equivariant decoder would, and could not place L-alanine's CB from 3 beads)."""
    m, model = _model(BEADS3, ala_md.z, "com")
    X = torch.tensor(m.map_positions(ala_md.R[:2] - ala_md.R[:2].mean(1, keepdims=True)), dtype=torch.float32)
    z = torch.zeros(2, 3, 4)
    with torch.no_grad():
        a, b = model.decode(X, z), model.decode(-X, z)
    assert (b + a).abs().max() > 1e-3  # float32 error of an exact mirror would be ~1e-6


@pytest.mark.parametrize("weighting", ["cog", "com"])
def test_decoded_atoms_average_to_their_bead(ala_md, weighting):
    beads = [b for b in BEADS6]
    beads[3] = [10, 11, 12]  # atom 13 (HB3) in no bead: attached with zero weight
    m, model = _model(beads, ala_md.z, weighting)
    X = m.map_positions(ala_md.R[:5] - ala_md.R[:5].mean(1, keepdims=True))
    z = torch.randn(5, 6, 4)
    with torch.no_grad():
        out = model.decode(torch.tensor(X, dtype=torch.float32), z).double().numpy()
    for k, b in enumerate(m.beads):
        w = np.ones(len(b)) if weighting == "cog" else m.atom_masses[b]
        mean = np.einsum("a,fad->fd", w / w.sum(), out[:, b])
        np.testing.assert_allclose(mean, X[:, k], atol=1e-5)
        assert np.abs(out[:, b] - X[:, k:k + 1]).max() > 1e-2 or len(b) == 1  # atoms spread around the bead
    np.testing.assert_allclose(m.map_positions(out), X, atol=1e-5)


@pytest.fixture(scope="module")
def trained(ala_md, tmp_path_factory):
    """A 3-bead model trained briefly (a few epochs on 200 frames): enough for API and file tests."""
    mapping = Mapping.from_indices(BEADS3, masses(ala_md.z), weighting="cog", names=["ACE", "ALA", "NME"])
    ck = tmp_path_factory.mktemp("bm") / "ck.pt"
    bm = Backmapper(mapping, hidden=16, latent=4, layers=2, enc_layers=1, epochs=3, batch_size=32)
    bm.fit(ala_md, checkpoint=ck, progress=False)
    return bm, ck


def test_fit_sample_universe_round_trip(trained, ala_md, ala_pdb, tmp_path):
    from backmap.universe import cg_universe, write_aa
    from forcefield import open_universe

    bm, _ = trained
    X = bm.mapping.map_positions(ala_md.R[:3])
    u = bm.sample(cg_universe(X, bm.mapping.names), n_samples=2, seed=0)
    ref = open_universe(ala_pdb)
    assert len(u.trajectory) == 6 and u.atoms.n_atoms == 22
    assert list(u.atoms.names) == list(ref.atoms.names)
    assert list(u.residues.resnames) == list(ref.residues.resnames)
    # frame f * n_samples + s maps back onto CG frame f
    for k, ts in enumerate(u.trajectory):
        np.testing.assert_allclose(bm.mapping.map_positions(u.atoms.positions.astype(float)), X[k // 2], atol=1e-3)
    out = write_aa(u, tmp_path / "bm.dcd")
    back = open_universe(tmp_path / "bm.pdb", out)
    assert len(back.trajectory) == 6 and list(back.atoms.names) == list(ref.atoms.names)
    assert list(back.residues.resnames) == ["ACE", "ALA", "NME"]
    back.trajectory[5]
    u.trajectory[5]
    np.testing.assert_allclose(back.atoms.positions, u.atoms.positions, atol=1e-3)


def test_sample_from_mapped_universe(trained, ala_md, ala_pdb):
    from cg import map_universe

    bm, _ = trained
    aa = ala_md.subset(np.arange(4)).to_universe(topology=str(ala_pdb))
    cgu = map_universe(aa, bm.mapping)
    u = bm.sample(cgu, n_samples=3, seed=1)
    assert len(u.trajectory) == 12


def test_save_load_and_resume(trained, ala_md, tmp_path):
    from backmap.train import load_checkpoint

    bm, ck = trained
    path = bm.save(tmp_path / "model.pt")
    bm2 = Backmapper.load(path)
    X = bm.mapping.map_positions(ala_md.R[:2])
    np.testing.assert_allclose(bm2.sample_positions(X, 2, seed=3), bm.sample_positions(X, 2, seed=3), atol=1e-6)
    assert bm2.mapping.names == bm.mapping.names and np.array_equal(bm2.z, bm.z)
    state = load_checkpoint(ck)
    assert state["epochs_done"] == 3 and state["epoch"] == 2  # "epoch": 0-based index of the last epoch done
    # resume: a longer run picks up at epoch 3 and keeps the first three epochs of history
    first = [h["coord"] for h in bm.history.train]
    bm3 = Backmapper(bm.mapping, hidden=16, latent=4, layers=2, enc_layers=1, epochs=4, batch_size=32)
    bm3.fit(ala_md, checkpoint=ck, progress=False)
    assert len(bm3.history.train) == 4 and [h["coord"] for h in bm3.history.train[:3]] == first


def test_bad_inputs_are_reported(trained, ala_md, tmp_path):
    bm, _ = trained
    with pytest.raises(InputError, match="4 beads, but the model was trained for 3"):
        bm.sample(np.zeros((2, 4, 3)))
    from backmap.universe import cg_universe

    with pytest.raises(InputError, match="beads"):
        bm.sample(cg_universe(np.zeros((1, 6, 3))))
    with pytest.raises(InputError, match="another order"):
        bm.sample(cg_universe(np.zeros((1, 3, 3)), ["NME", "ALA", "ACE"]))
    with pytest.raises(InputError, match="21 atoms"):
        Backmapper(bm.mapping).fit(ala_md.subset(np.arange(5)).__class__(R=ala_md.R[:5, :21], z=ala_md.z[:21]))
    wrong = ala_md.z.copy()
    wrong[5] = 16
    from forcefield.dataset import Dataset

    with pytest.raises(InputError, match="atom 5 has atomic number 16"):
        bm.reconstruct_positions(Dataset(R=ala_md.R[:2], z=wrong))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable backmapping model"):
        Backmapper.load(bad)
    with pytest.raises(InputError, match="not trained"):
        Backmapper(bm.mapping).sample(np.zeros((1, 3, 3)))


def test_relaxation_lowers_energy_and_keeps_heavy_atoms(trained, ala_md, ala_pdb):
    from backmap.metrics import energies
    from backmap.sample import relax_callable

    bm, _ = trained
    rng = np.random.default_rng(0)
    R = ala_md.R[:2] + rng.normal(scale=0.08, size=ala_md.R[:2].shape)
    out = bm.relax(R, max_iterations=100)
    heavy = ala_md.z > 1
    assert (energies(str(ala_pdb), out) < energies(str(ala_pdb), R) - 50).all()
    assert np.abs(out[:, heavy] - R[:, heavy]).max() < 0.5
    # callable force provider: a harmonic well at the true frame pulls the hydrogens home
    target = ala_md.R[0]
    out2 = relax_callable(R[0], lambda r: (25.0 * ((r - target) ** 2).sum(), -50.0 * (r - target)), ala_md.z,
                          k_restraint=100.0, n_steps=300)
    h = ~heavy
    assert np.linalg.norm(out2[h] - target[h], axis=1).mean() < 0.5 * np.linalg.norm(R[0][h] - target[h], axis=1).mean()


def test_relaxation_repairs_misplaced_and_overlapping_atoms(trained, ala_md):
    """Restraints hold atoms near their decoded positions, so a heavy atom decoded 1.5 Å off its bonds stays
    broken when it is held; released (its bonds are out of range) or with only the CG bead atoms held
    (``hold="beads"``), the force field puts it back and the bond graph is valid again. Two atoms decoded on
    top of each other are separated as well."""
    import copy

    import cg
    from backmap.metrics import bond_graph_scores

    def valid(X):
        return bool(bond_graph_scores(X[None], ala_md.R[:1], ala_md.z)[0].all())

    bm = copy.copy(trained[0])  # the same topology, with a one-bead (Cα-like) map of a backbone carbon
    carbons = np.flatnonzero(ala_md.z == 6)
    bm.mapping = cg.Mapping(beads=[[int(carbons[1])]], atom_masses=trained[0].mapping.atom_masses)
    beads = carbons[1:2]
    a = int(next(i for i in np.flatnonzero(ala_md.z > 1) if i not in beads))
    R = ala_md.R[:1].copy()
    R[0, a] += np.array([1.5, 0.0, 0.0])
    kw = dict(k_restraint=1000.0, max_iterations=300)
    held = bm.relax(R, release_overlaps=False, bonded_first=False, **kw)
    released = bm.relax(R, **kw)
    beads_only = bm.relax(R, hold="beads", release_overlaps=False, **kw)
    assert [valid(held), valid(released), valid(beads_only)] == [False, True, True]
    assert np.linalg.norm(released[0, a] - ala_md.R[0, a]) < 0.5
    assert np.abs(beads_only[0, beads] - R[0, beads]).max() < 0.1
    # two hydrogens of one carbon decoded at the same place
    h = np.flatnonzero(ala_md.z == 1)
    ch = [i for i in h if np.linalg.norm(ala_md.R[0, i] - ala_md.R[0, h[0]]) < 2.0 and i != h[0]][0]
    R = ala_md.R[:1].copy()
    R[0, ch] = R[0, h[0]]
    assert not valid(R[0])
    assert valid(bm.relax(R, **kw)[0])
    with pytest.raises(InputError, match="hold"):
        bm.relax(R, hold="all")


def test_evaluation_reports_relaxed_samples_apart(trained, ala_md):
    """``BackmapConfig(relax=True)``: the same prior samples after restrained amber14 minimisation are reported
    as ``relaxed_*`` beside the raw figures; minimisation does not break bonds that were right, does not move the
    heavy atoms away from the reference, and the clash rate does not rise."""
    from backmap.recipe import BackmapConfig, evaluate_backmapper

    bm, _ = trained
    cfg = BackmapConfig(frames=3, samples=2, relax=True, relax_k=10.0)
    out = evaluate_backmapper(bm, ala_md[-20:], cfg, seed=1)
    raw = evaluate_backmapper(bm, ala_md[-20:], BackmapConfig(frames=3, samples=2), seed=1)
    assert "relaxed_rmsd_all" in out and "relaxed_rmsd_all" not in raw
    assert out["prior_rmsd_all"] == raw["prior_rmsd_all"]  # the raw figures do not change
    assert out["relaxed_valid_ratio"] >= out["prior_valid_ratio"]
    assert out["relaxed_clash_rate"] <= out["prior_clash_rate"]
    # restrained: the heavy atoms move toward chemistry, not away from the structure (here, a briefly trained
    # model's distorted samples, relaxing brings them closer to the reference)
    assert out["relaxed_rmsd_heavy"] <= out["prior_rmsd_heavy"] + 0.05


def test_vae_loss_matches_methyl_hydrogens_in_best_order(ala_pdb, rng):
    """The VAE's coordinate term: a relabelled methyl costs nothing with groups, as much as a plain per-atom
    error without them; near the reference (no relabelling helps) both agree exactly."""
    from backmap.losses import BackmapLoss, GeometryTerms, equivalent_groups
    from forcefield import open_universe
    from forcefield.geometry import covalent_bonds
    from forcefield.universe import elements_of

    u = open_universe(ala_pdb)
    R0 = u.atoms.positions.astype(float)
    z = np.asarray(elements_of(u.atoms))
    bonds = covalent_bonds(R0, z)
    terms = GeometryTerms.build(bonds, R0[None], 2.0)
    matched = BackmapLoss(terms, groups=equivalent_groups(bonds, z))
    plain = BackmapLoss(terms)
    R = torch.tensor(R0[None])
    lat = {k: torch.zeros(1, 3, 4, dtype=torch.float64) for k in ("mu_q", "lv_q", "mu_p", "lv_p")}

    def coord(loss, P):
        return loss({"R": P, **lat}, R)[1]["coord"]

    P = R.clone()
    for g in equivalent_groups(bonds, z):
        P[0, g] = R[0, np.roll(g, 1)]
    assert coord(plain, P) > 0.5
    assert coord(matched, P) == pytest.approx(0.0, abs=1e-12)
    Q = R + torch.tensor(rng.normal(scale=0.01, size=R.shape))
    assert coord(matched, Q) == pytest.approx(coord(plain, Q), rel=1e-12)
    assert coord(plain, Q) > 0
