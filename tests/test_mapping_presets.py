"""Presets, selections, JSON files and clear errors of cg.Mapping (alanine dipeptide)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import cg
from forcefield.errors import InputError


@pytest.fixture(scope="module")
def ala_u(ala_pdb):
    import MDAnalysis as mda

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mda.Universe(str(ala_pdb))


def _beads_by_name(m, u):
    return [sorted(str(u.atoms[i].name) for i in b) for b in m.beads]


def test_heavy_preset_united_atoms(ala_u):
    m = cg.Mapping.from_preset(ala_u.atoms, "heavy")
    assert m.n_beads == 10 and list(m.names) == ["CH3", "C", "O", "N", "CA", "CB", "C", "O", "N", "C"]
    got = _beads_by_name(m, ala_u)
    assert got[0] == sorted(["CH3", "H1", "H2", "H3"]) and got[4] == ["CA", "HA"] and got[2] == ["O"]
    m.check(complete=True, connected=True)
    # the heavy-atom graph of ACE-ALA-NME: a tree with 9 bonds
    assert m.bonds.tolist() == [[0, 1], [1, 2], [1, 3], [3, 4], [4, 5], [4, 6], [6, 7], [6, 8], [8, 9]]
    assert np.isclose(m.masses.sum(), ala_u.atoms.masses.sum())


def test_backbone_presets(ala_u):
    m = cg.Mapping.from_preset(ala_u.atoms, "backbone")
    assert list(m.names) == ["C", "N", "CA", "C", "N", "C"]
    got = _beads_by_name(m, ala_u)
    assert got[0] == sorted(["CH3", "H1", "H2", "H3", "C", "O"])  # ACE cap joins its carbonyl C
    assert got[2] == sorted(["CA", "HA", "CB", "HB1", "HB2", "HB3"])  # side chain joins CA
    assert got[3] == ["C", "O"] and got[1] == ["H", "N"]
    m.check()
    assert m.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
    assert cg.Mapping.from_preset(ala_u.atoms, "backbone_cb").n_beads == 7
    full = cg.Mapping.from_preset(ala_u.atoms, "backbone_full")
    assert list(full.names) == ["C", "O", "N", "CA", "CB", "C", "O", "N", "C"]
    full.check()


def test_residue_and_ca_presets(ala_u, ala_md):
    m = cg.Mapping.from_preset(ala_u, "residue")
    assert list(m.names) == ["ACE", "ALA", "NME"] and [len(b) for b in m.beads] == [6, 10, 6]
    R = ala_md.R[:5]
    res = ala_u.atoms.residues
    want = np.stack([[(r.atoms.masses[:, None] * R[f][r.atoms.indices]).sum(0) / r.atoms.masses.sum() for r in res]
                     for f in range(5)])
    assert np.allclose(m.map_positions(R), want)
    assert np.allclose(m.map_forces(ala_md.F[:5]).sum(1), ala_md.F[:5].sum(1))  # total force conserved
    ca = cg.Mapping.from_preset(ala_u.atoms, "ca")
    assert ca.n_beads == 1 and ca.beads[0].tolist() == [8]
    assert np.allclose(ca.map_positions(R)[:, 0], R[:, 8])
    # the Cα bead force: Cα and its own hydrogen (HA, atom 9), so the stiff C-H bond force cancels
    F = ala_md.F
    assert np.allclose(ca.map_forces(F)[:, 0], F[:, 8] + F[:, 9])
    assert (ca.map_forces(F)[:, 0] ** 2).mean() < (F[:, 8] ** 2).mean()
    with pytest.raises(InputError, match="unknown preset"):
        cg.Mapping.from_preset(ala_u.atoms, "martini")


def test_selections_and_json_round_trip(ala_u, tmp_path):
    sel = {"ACE": "resname ACE", "ALA": "resname ALA", "NME": "resname NME"}
    m = cg.Mapping.from_selections(ala_u.atoms, sel, complete=True)
    ref = cg.Mapping.from_preset(ala_u.atoms, "residue")
    assert [b.tolist() for b in m.beads] == [b.tolist() for b in ref.beads]
    part = cg.Mapping.from_selections(ala_u.atoms, {"CA": "name CA", "CB": "name CB"}, attach_rest=True)
    assert sorted(np.concatenate(part.beads).tolist()) == list(range(22)) and part.is_connected()
    path = m.save(tmp_path / "map.json")
    d = json.loads(path.read_text())
    assert d["format"] == "cgworkbench-mapping" and d["names"] == ["ACE", "ALA", "NME"]
    back = cg.Mapping.load(path)
    assert back.names == m.names and np.allclose(back.matrix(), m.matrix())
    assert np.array_equal(back.bonds, m.bonds) and back.atom_names == m.atom_names


@pytest.mark.parametrize("sel, match", [
    ({"A": "resname ACE", "X": "resname GLY"}, "bead 'X': selection 'resname GLY' matches no atoms"),
    ({"A": "resname ACE", "B": "name C"}, "bead 'B': .*overlaps bead 'A'"),
    ({"A": "resname ACE", "B": "name and or"}, "bead 'B': invalid selection"),
    ({"A": "resname ACE", "B": "resname ALA"}, "atoms are in no bead: atom 16 \\(NME 3 N\\)"),
])
def test_bad_selections_name_the_bead(ala_u, sel, match):
    with pytest.raises(InputError, match=match):
        cg.Mapping.from_selections(ala_u.atoms, sel, complete=True)


def test_bad_indices_and_files(tmp_path):
    with pytest.raises(InputError, match=r"bead 1 \(tail\) names atom 7, but there are 4 atoms"):
        cg.Mapping.from_indices([[0, 1], [2, 7]], np.ones(4), names=["head", "tail"])
    with pytest.raises(InputError, match=r"bead 1 \(B1\) overlaps bead 0 \(B0\) at atom 1"):
        cg.Mapping.from_indices([[0, 1], [1, 2]], np.ones(4))
    m = cg.Mapping.from_indices([[0, 2], [1], [3]], np.ones(4), atom_bonds=[[0, 1], [1, 2], [2, 3]])
    with pytest.raises(InputError, match=r"bead 0 \(B0\) is not bond-connected"):
        m.check()
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        cg.Mapping.load(bad)


# ----------------------------------------------------------------------------- peptides: CG topology
CHIGNOLIN = ["GLY", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "GLY"]


@pytest.fixture(scope="module")
def chig_pdb(tmp_path_factory):
    from forcefield.reference import build_peptide

    path = tmp_path_factory.mktemp("chig") / "chignolin.pdb"
    build_peptide("GYDPETGTWG", caps="ace-nme", out=path)
    return path


def _universe(path):
    import MDAnalysis as mda

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mda.Universe(str(path))


def test_ca_map_of_a_peptide_has_its_chain_topology(chig_pdb, tmp_path):
    u = _universe(chig_pdb)
    m = cg.Mapping.from_preset(u.atoms, "ca")
    n = 10
    assert m.n_beads == n and m.bead_types == CHIGNOLIN and m.names == ["CA"] * n
    # bead forces: each Cα with its hydrogens (two on glycine)
    W = m.force_matrix()
    assert (W > 0).sum(1).tolist() == [3 if r == "GLY" else 2 for r in CHIGNOLIN]
    assert {str(u.atoms[i].name) for i in np.flatnonzero(W.sum(0))} == {"CA", "HA", "HA2", "HA3"}
    assert m.bonds.tolist() == [[i, i + 1] for i in range(n - 1)]
    assert m.angles.tolist() == [[i, i + 1, i + 2] for i in range(n - 2)]
    assert sorted(m.dihedrals.tolist()) == [[i, i + 1, i + 2, i + 3] for i in range(n - 3)]
    assert sorted(map(tuple, m.exclusions.tolist())) == [(i, j) for i in range(n) for j in range(i + 1, min(i + 3, n))]
    assert sorted(map(tuple, m.nonbonded_pairs.tolist())) == [(i, j) for i in range(n) for j in range(i + 3, n)]
    # trans peptides: consecutive Cα atoms 3.8 Å apart
    X = m.map_positions(u.atoms.positions[None])[0]
    assert np.allclose(np.linalg.norm(X[1:] - X[:-1], axis=1), 3.82, atol=0.06)
    # files keep the CG bonds and types; files written before they existed still load
    back = cg.Mapping.load(m.save(tmp_path / "ca.json"))
    assert np.array_equal(back.bonds, m.bonds) and back.bead_types == CHIGNOLIN
    old = m.to_dict()
    del old["bead_bonds"], old["bead_types"]
    legacy = cg.Mapping.from_dict(old)
    assert len(legacy.bonds) == 0 and legacy.bead_types == legacy.names
    # a Cα-only trace (no C/N atoms, no atom bonds) gets the same chain from Cα-Cα distances
    trace = cg.Mapping.from_preset(u.select_atoms("name CA"), "ca")
    assert np.array_equal(trace.bonds, m.bonds)


def test_chain_breaks_and_disulfides(chig_pdb):
    u = _universe(chig_pdb)
    # move residues 6-10 (+ NME) 10 Å away: the chain breaks between THR 6 and GLY 7
    moved = u.atoms.positions.copy()
    tail = u.atoms.resindices >= 7  # ACE is residue 0
    moved[tail] += np.array([10.0, 0.0, 0.0])
    u.atoms.positions = moved
    m = cg.Mapping.from_preset(u.atoms, "ca")
    assert [5, 6] not in m.bonds.tolist() and len(m.bonds) == 8
    assert (5, 6) in set(map(tuple, m.nonbonded_pairs.tolist()))
    assert (4, 6) not in set(map(tuple, m.exclusions.tolist()))
    # a disulfide: CYS 2 and CYS 9 with SG-SG at 2.05 Å bond their Cα beads (and residue beads)
    import io

    import MDAnalysis as mda

    from cg.presets import residue_links
    from forcefield.reference import build_peptide

    text = build_peptide("ACAAAAAACA", conformation="helix", minimize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = mda.Universe(io.StringIO(text), format="PDB")
    sg = w.select_atoms("resname CYS and name SG")
    cb = w.select_atoms("resname CYS and name CB")
    pos = w.atoms.positions.copy()
    d = pos[sg[0].index] - pos[cb[0].index]
    pos[sg[1].index] = pos[sg[0].index] + 2.05 * d / np.linalg.norm(d)
    w.atoms.positions = pos
    pep, ss = residue_links(w.atoms)
    assert ss.tolist() == [[2, 9]] and pep.tolist() == [[i, i + 1] for i in range(11)]
    ca = cg.Mapping.from_preset(w.atoms, "ca")
    assert [1, 8] in ca.bonds.tolist() and len(ca.bonds) == 10
    res = cg.Mapping.from_preset(w.atoms, "residue")
    assert [2, 9] in res.bonds.tolist()


def test_sidechain_preset(chig_pdb):
    u = _universe(chig_pdb)
    m = cg.Mapping.from_preset(u.atoms, "sidechain")
    n_sc = sum(r != "GLY" for r in CHIGNOLIN)
    assert m.n_beads == 10 + n_sc and m.names.count("SC") == n_sc
    m.check(complete=True, connected=True)
    assert [t for t in m.bead_types if t != "BB"] == [r for r in CHIGNOLIN if r != "GLY"]
    bb = [k for k, nm in enumerate(m.names) if nm == "BB"]
    bonds = set(map(tuple, m.bonds.tolist()))
    assert all((a, b) in bonds for a, b in zip(bb[:-1], bb[1:]))  # backbone chain
    assert all((k - 1, k) in bonds for k, nm in enumerate(m.names) if nm == "SC")  # SC on its own BB
    assert len(bonds) == m.n_beads - 1  # a tree: no side chain touches another residue
    # the residue preset: a chain over the caps too; bead force sums keep the total force
    r = cg.Mapping.from_preset(u.atoms, "residue")
    assert r.bonds.tolist() == [[i, i + 1] for i in range(11)] and r.bead_types == ["ACE"] + CHIGNOLIN + ["NME"]


def test_represented_masses_give_each_atom_to_its_nearest_bead(chig_pdb):
    """A chain 0-1-2-3-4 with beads {0} and {4}: 1 goes to bead 0, 3 to bead 1, the tie 2 to bead 0; on a
    peptide's Cα map every bead carries its residue's mass (what the pipeline's "represented" masses are)."""
    w = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    m = cg.Mapping(beads=[[0], [4]], atom_masses=w, atom_bonds=np.array([[0, 1], [1, 2], [2, 3], [3, 4]]))
    assert m.represented_masses().tolist() == [7.0, 24.0]
    assert m.masses.tolist() == [1.0, 16.0]
    u = _universe(chig_pdb)
    ca = cg.Mapping.from_preset(u.atoms, "ca")
    res = [float(r.atoms.masses.sum()) for r in u.residues]
    if len(res) == ca.n_beads + 2:  # capped: ACE joins the first Cα bead, NME the last
        res = [res[0] + res[1], *res[2:-2], res[-2] + res[-1]]
    assert np.allclose(ca.represented_masses(), res)
    assert ca.represented_masses().sum() == pytest.approx(ca.atom_masses.sum())
    with pytest.raises(InputError, match="bond graph"):
        cg.Mapping(beads=[[0]], atom_masses=w).represented_masses()
