"""e3nn backmapping decoder: e3nn's assert_equivariant (atoms rotate and move with the CG input), mapping-
aware re-centring, handedness, one model for two molecules, Backmapper(decoder="e3nn") fit / save / load."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant

from backmap import Backmapper
from backmap.api import _hosts
from backmap.e3nn_decoder import DecoderConfig, E3nnDecoder, topology_tokens
from cg.mapping import Mapping
from forcefield.elements import masses
from forcefield.errors import InputError

BEADS3 = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21]]
SMALL = dict(hidden_irreps="8x0e + 2x0o + 4x1o + 4x1e", lmax=2, n_layers=2, cutoff=8.0, n_rbf=6, radial_hidden=8,
             atom_hidden=16, noise=4)


@contextlib.contextmanager
def default_dtype(dtype):
    """e3nn builds its constants (Clebsch-Gordan, Wigner D generators) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def ala(ala_pdb):
    """Positions, elements, bonds and PDB text of alanine dipeptide."""
    from backmap.universe import topology_pdb_text
    from forcefield import open_universe
    from forcefield.geometry import covalent_bonds
    from forcefield.universe import elements_of

    u = open_universe(ala_pdb)
    R0 = u.atoms.positions.astype(float)
    z = np.asarray(elements_of(u.atoms))
    return R0, z, covalent_bonds(R0, z), topology_pdb_text(u)


def _decoder(ala, beads=BEADS3, names=("ACE", "ALA", "NME"), dtype=torch.float64, seed=0, weighting="com"):
    R0, z, bonds, top = ala
    m = Mapping.from_indices(beads, masses(z), weighting, names=list(names))
    host = _hosts(m, bonds, R0)
    C = m.matrix()
    w = np.array([C[host[a], a] for a in range(m.n_atoms)])
    bt, at = topology_tokens(m, host, top, z)
    torch.manual_seed(seed)
    with default_dtype(dtype):
        dec = E3nnDecoder(DecoderConfig(atom_vocab=sorted(set(at)), bead_vocab=sorted(set(bt)), **SMALL), bt, at, host, w)
    with torch.no_grad():  # a non-trivial network
        for p in dec.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m, dec.eval()


def _cg(ala, m, rng, F=3):
    R0 = ala[0]
    R = R0[None] + rng.normal(scale=0.3, size=(F, *R0.shape))
    return torch.tensor(m.map_positions(R - R.mean(1, keepdims=True)))


@pytest.mark.parametrize("beads", [BEADS3, [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15],
                                            [16, 17, 18, 19, 20, 21]]])
def test_assert_equivariant_atoms_follow_the_beads(ala, rng, beads):
    """Decoded atoms rotate and translate with the CG input (same noise), by e3nn's own helper."""
    m, dec = _decoder(ala, beads, [f"B{i}" for i in range(len(beads))])
    X = _cg(ala, m, rng)
    eps = dec.noise(X.shape[0], generator=torch.Generator().manual_seed(1)).double()
    out = dec.decode(X, eps).detach()
    host = dec.host.numpy()
    assert (out - X[:, host]).norm(dim=-1).max() > 0.1  # atoms really placed off their beads
    with default_dtype(torch.float64):
        errs = assert_equivariant(lambda x: dec.decode(x, eps), args_in=[X], irreps_in=["cartesian_points"],
                                  irreps_out=["cartesian_points"], do_parity=False, tolerance=1e-9, ntrials=2)
    assert (0, True) in errs
    # a plain translation of the CG frame moves every atom by the same vector
    t = torch.tensor([5.0, -2.0, 11.0], dtype=torch.float64)
    assert torch.allclose(dec.decode(X + t, eps), out + t, atol=1e-10)
    # mapping the decoded atoms gives back the beads (mass-weighted re-centring)
    np.testing.assert_allclose(m.map_positions(out.numpy()), X.numpy(), atol=1e-10)


def test_decoder_knows_handedness(ala, rng):
    """Summing pseudovector (1e) channels as vectors: a mirrored CG input is not decoded as the mirror image
    (a mirror-equivariant decoder could not place alanine's CB out of the plane of three beads)."""
    m, dec = _decoder(ala)
    X = _cg(ala, m, rng)
    eps = dec.noise(X.shape[0], 0.0).double()
    a, b = dec.decode(X, eps), dec.decode(-X, eps)
    assert (a + b).abs().max() > 1e-3


def test_one_model_serves_another_molecule(ala, rng):
    """The weights are keyed by tokens, not atom numbers: the model bound to the dipeptide decodes a
    two-residue fragment (ACE + ALA) with its own beads, equivariantly; unknown tokens are an error."""
    m, dec = _decoder(ala)
    R0, z, bonds, top = ala
    frag = list(range(16))
    m2 = Mapping.from_indices(BEADS3[:2], masses(z[frag]), "com", names=["ACE", "ALA"])
    b2 = bonds[(bonds < 16).all(1)]
    host2 = _hosts(m2, b2, R0[frag])
    C2 = m2.matrix()
    bt2 = [t for t in dec.cfg.bead_vocab if not t.startswith("NME")]
    at2 = topology_tokens(m, _hosts(m, bonds, R0), top, z)[1][:16]
    dec2 = E3nnDecoder(dec.cfg.__class__(**{**dec.cfg.to_dict()}))
    dec2.load_state_dict({k: v for k, v in dec.state_dict().items()
                          if k not in ("bead_tok", "atom_tok", "host", "weights", "member")}, strict=False)
    dec2.double().bind(sorted(bt2), at2, host2, np.array([C2[host2[a], a] for a in range(16)]))
    X2 = torch.tensor(m2.map_positions(R0[frag][None] - R0[frag].mean(0)))
    eps = dec2.noise(1, 0.5, torch.Generator().manual_seed(0)).double()
    out = dec2.decode(X2, eps)
    assert out.shape == (1, 16, 3)
    from forcefield.geometry import random_rotation

    Q = torch.tensor(random_rotation(rng))
    assert torch.det(Q) > 0  # a proper rotation
    assert torch.allclose(dec2.decode(X2 @ Q.T, eps), out @ Q.T, atol=1e-9)
    with pytest.raises(InputError, match="GLY:CA"):
        dec2.bind(["GLY:CA"], ["GLY:CA"], np.array([0]), np.array([1.0]))


@pytest.fixture(scope="module")
def fitted(ala_md, tmp_path_factory):
    """A Backmapper with the e3nn decoder trained for two short epochs on 120 frames (with a checkpoint)."""
    mapping = Mapping.from_indices(BEADS3, masses(ala_md.z), "com", names=["ACE", "ALA", "NME"])
    bm = Backmapper(mapping, decoder="e3nn", decoder_options={**SMALL, "n_draws": 3}, epochs=2, batch_size=32)
    torch.set_num_threads(1)
    ck = tmp_path_factory.mktemp("e3nn") / "ck.pt"
    return bm.fit(ala_md.subset(np.arange(120)), checkpoint=ck, progress=False), ck


def test_backmapper_e3nn_fit_sample_save_load(fitted, ala_md, tmp_path):
    bm, ck = fitted
    assert isinstance(bm.model, E3nnDecoder) and len(bm.history.train) == 2
    # the closest-draw training error fell during the fit
    assert bm.history.train[-1]["coord"] < bm.history.train[0]["coord"]
    X = bm.mapping.map_positions(ala_md.R[150:153])
    S = bm.sample_positions(X, n_samples=4, seed=3)
    assert S.shape == (3, 4, 22, 3)
    np.testing.assert_allclose(bm.mapping.map_positions(S.reshape(-1, 22, 3)), np.repeat(X, 4, 0), atol=1e-3)
    assert np.abs(S[:, 0] - S[:, 1]).max() > 1e-3  # noise draws differ
    path = bm.save(tmp_path / "e3nn.pt")
    back = Backmapper.load(path)
    assert back.decoder == "e3nn" and back.model.cfg.to_dict() == bm.model.cfg.to_dict()
    np.testing.assert_allclose(back.sample_positions(X, n_samples=4, seed=3), S, atol=1e-6)
    u = back.sample(X[:1], n_samples=2, seed=0)
    assert len(u.trajectory) == 2 and list(u.residues.resnames) == ["ACE", "ALA", "NME"]
    with pytest.raises(InputError, match="decoder"):
        Backmapper(bm.mapping, decoder="diffusion")
    # resume: a longer run continues from the checkpoint and keeps the first two epochs
    bm3 = Backmapper(bm.mapping, decoder="e3nn", decoder_options={**SMALL, "n_draws": 3}, epochs=3, batch_size=32)
    bm3.fit(ala_md.subset(np.arange(120)), checkpoint=ck, progress=False)
    assert len(bm3.history.train) == 3
    assert [h["coord"] for h in bm3.history.train[:2]] == [h["coord"] for h in bm.history.train]


def test_coordinate_error_matches_interchangeable_atoms_in_best_order(ala, rng):
    """Methyl hydrogens swapped among themselves cost nothing; the plain per-atom error is kept otherwise."""
    from backmap.e3nn_decoder import GeometryBuffers, equivalent_groups
    from backmap.losses import GeometryTerms

    R0, z, bonds, _ = ala
    groups = equivalent_groups(bonds, z)
    assert sorted(map(len, groups)) == [3, 3, 3] and all((z[g] == 1).all() for g in groups)  # three methyls
    R = torch.tensor(R0[None])
    terms = GeometryBuffers(GeometryTerms.build(bonds, R0[None], 2.0), groups)
    P = R.clone()
    for g in groups:  # a cyclic relabelling of every methyl
        P[0, g] = R[0, np.roll(g, 1)]
    assert ((P - R) ** 2).sum(-1).mean() > 0.5
    assert terms.coordinate_error(P[:, None], R).item() == pytest.approx(0.0, abs=1e-12)
    Q = P + torch.tensor(rng.normal(scale=0.1, size=P.shape))
    plain = GeometryBuffers(GeometryTerms.build(bonds, R0[None], 2.0))
    assert plain.coordinate_error(Q[:, None], R).item() == pytest.approx(((Q - R) ** 2).sum(-1).mean().item())
    assert terms.coordinate_error(Q[:, None], R).item() < 0.1 * plain.coordinate_error(Q[:, None], R).item()
