"""Peptide builder: amber14 accepts every standard residue, geometry is ideal, L chirality, chosen φ/ψ."""
from __future__ import annotations

import io

import numpy as np
import pytest

from forcefield.errors import InputError

ALL20 = "ACDEFGHIKLMNPQRSTVWY"
FIVE_RINGS = ("HIS", "HID", "HIE", "HIP", "TRP", "PRO")


def _topology_positions(text):
    import openmm.app as app

    pdb = app.PDBFile(io.StringIO(text))
    return pdb, np.array(pdb.positions.value_in_unit(pdb.positions.unit)) * 10.0


@pytest.fixture(scope="module")
def all20():
    from forcefield.reference import build_peptide

    return build_peptide(ALL20, caps="ace-nme", minimize=False), build_peptide(ALL20, caps="ace-nme")


def _system(pdb):
    import openmm.app as app

    return app.ForceField("amber14-all.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff)


def test_all_twenty_residues_parametrise_and_minimise(all20):
    import openmm
    import openmm.unit as u

    _, text = all20
    pdb, X = _topology_positions(text)
    names = [r.name for r in pdb.topology.residues()]
    assert names[0] == "ACE" and names[-1] == "NME" and len(names) == 22
    assert set(names) == {"ACE", "NME", "ALA", "CYS", "ASP", "GLU", "PHE", "GLY", "HIS", "ILE", "LYS", "LEU", "MET",
                          "ASN", "PRO", "GLN", "ARG", "SER", "THR", "VAL", "TRP", "TYR"}
    his = {a.name for r in pdb.topology.residues() if r.name == "HIS" for a in r.atoms()}
    assert len({"HD1", "HE2"} & his) >= 1  # a protonation state was chosen
    system = _system(pdb)  # raises ValueError on any template mismatch
    # unrestrained minimisation: a finite local minimum, and no non-bonded contact closer than 1.5 Å
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pdb.positions)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 300)
    st = ctx.getState(getEnergy=True, getPositions=True)
    e1 = st.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole)
    assert np.isfinite(e1) and e1 <= e0 and e0 < 0.0  # the built structure is already low in energy
    Y = st.getPositions(asNumpy=True).value_in_unit(u.angstrom)
    n = len(Y)
    close = np.zeros((n, n), bool)
    for b in pdb.topology.bonds():
        close[b[0].index, b[1].index] = close[b[1].index, b[0].index] = True
    close = close | (close.astype(int) @ close.astype(int) > 0) | np.eye(n, dtype=bool)  # 1-2 and 1-3
    D = np.linalg.norm(Y[:, None] - Y[None], axis=-1)
    assert D[~close].min() > 1.5


def test_built_geometry_is_ideal_and_l_chiral(all20):
    """Heavy-atom bond lengths of the unminimised build are amber's equilibrium lengths (±0.05 Å, proline ring
    closure included), angles within 8°, and every Cα is L (CIP S, R for cysteine)."""
    import openmm
    from rdkit import Chem

    raw, _ = all20
    pdb, X = _topology_positions(raw)
    system = _system(pdb)
    heavy = np.array([a.element.symbol != "H" for a in pdb.topology.atoms()])
    resname = [a.residue.name for a in pdb.topology.atoms()]
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            dev = [abs(np.linalg.norm(X[i] - X[j]) - 10 * r0._value)
                   for i, j, r0, _ in (f.getBondParameters(k) for k in range(f.getNumBonds())) if heavy[i] and heavy[j]]
            assert len(dev) > 150 and max(dev) < 0.05
        if isinstance(f, openmm.HarmonicAngleForce):
            dev = []
            for k in range(f.getNumAngles()):
                i, j, l, t0, _ = f.getAngleParameters(k)
                # five-membered rings (HIS, TRP, PRO) excluded: amber's 120° aromatic angles cannot all hold there
                if heavy[i] and heavy[j] and heavy[l] and resname[j] not in FIVE_RINGS:
                    a, b = X[i] - X[j], X[l] - X[j]
                    dev.append(abs(np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) - t0._value)))
            assert len(dev) > 150 and max(dev) < 8.0
    mol = Chem.MolFromPDBBlock(raw, removeHs=False)
    Chem.AssignStereochemistryFrom3D(mol)
    cip = {}
    for a in mol.GetAtoms():
        ri = a.GetPDBResidueInfo()
        if a.HasProp("_CIPCode"):
            cip[(ri.GetResidueName(), ri.GetName().strip())] = a.GetProp("_CIPCode")
    for res in ("ALA", "ASP", "PHE", "LYS", "PRO", "TRP", "TYR", "SER"):
        assert cip[(res, "CA")] == "S", res
    assert cip[("CYS", "CA")] == "R" and cip[("THR", "CB")] == "R" and cip[("ILE", "CB")] == "S"


def _dihedral(p0, p1, p2, p3):
    from forcefield.geometry import dihedrals

    return float(np.degrees(dihedrals(np.stack([p0, p1, p2, p3])[None], [0, 1, 2, 3])[0, 0]))


@pytest.mark.parametrize("conformation, phi, psi", [("helix", -57.0, -47.0), ("extended", -135.0, 135.0),
                                                     ((-80.0, 70.0), -80.0, 70.0)])
def test_backbone_torsions_as_requested(conformation, phi, psi):
    from forcefield.reference.peptide import heavy_atoms, parse_sequence

    res = heavy_atoms(parse_sequence("AAGAA"), "zwitterion", conformation)
    bb = [r[1] for r in res]
    for k in range(1, len(bb) - 1):
        assert _dihedral(bb[k - 1]["C"], bb[k]["N"], bb[k]["CA"], bb[k]["C"]) == pytest.approx(phi, abs=1e-6)
        assert _dihedral(bb[k]["N"], bb[k]["CA"], bb[k]["C"], bb[k + 1]["N"]) == pytest.approx(psi, abs=1e-6)
        assert abs(_dihedral(bb[k]["CA"], bb[k]["C"], bb[k + 1]["N"], bb[k + 1]["CA"])) == pytest.approx(180.0)
    if conformation == "helix":  # 3.6 residues per turn: Cα(i)-Cα(i+3) ≈ 5.0-5.4 Å, far shorter than in a strand
        d = np.linalg.norm(bb[0]["CA"] - bb[3]["CA"])
        assert 4.8 < d < 5.6


def test_zwitterion_termini_and_cli(tmp_path, capsys):
    from cgwb.cli import main

    out = tmp_path / "chignolin.pdb"
    assert main(["data", "build", "--sequence", "GYDPETGTWG", "--caps", "zwitterion", "-o", str(out)]) == 0
    pdb, _ = _topology_positions(out.read_text())
    res = list(pdb.topology.residues())
    assert [r.name for r in res][:4] == ["GLY", "TYR", "ASP", "PRO"] and len(res) == 10
    assert {"H", "H2", "H3"} <= {a.name for a in res[0].atoms()} and "OXT" in {a.name for a in res[-1].atoms()}
    system = _system(pdb)
    charge = sum(system.getForce(k).getParticleParameters(i)[0]._value for k in range(system.getNumForces())
                 if system.getForce(k).__class__.__name__ == "NonbondedForce" for i in range(system.getNumParticles()))
    assert charge == pytest.approx(-2.0, abs=1e-4)  # NH3+, COO-, ASP-, GLU-
    assert "wrote" in capsys.readouterr().out


def test_bad_sequences_are_named():
    from forcefield.reference import build_peptide, parse_sequence

    assert parse_sequence("ALA-GLY ser") == ["ALA", "GLY", "SER"] and parse_sequence("gyd") == ["GLY", "TYR", "ASP"]
    with pytest.raises(InputError, match="residue 2 'X'"):
        parse_sequence("GXB")
    with pytest.raises(InputError, match="residue 2 'FOO'"):
        parse_sequence("ALA-FOO")
    with pytest.raises(InputError, match="unknown caps"):
        build_peptide("AA", caps="none")
    with pytest.raises(InputError, match="unknown conformation"):
        build_peptide("AA", conformation="sheet")


def test_shipped_chignolin_example_is_the_builders_output():
    from pathlib import Path

    from cgwb.pipeline.config import load_config
    from forcefield.reference import build_peptide

    here = Path(__file__).resolve().parent.parent / "examples"
    cfg = load_config(here / "chignolin.toml")
    assert cfg["system"]["solvent"] == "obc2" and cfg["mapping"]["preset"] == "ca"
    assert cfg["reference"]["forces"] == "openmm"
    for other in ("chignolin_tip3p.toml", "chignolin_10ns.toml"):  # the other shipped configs validate
        assert load_config(here / other)["system"]["pdb"] == "chignolin.pdb"
    ten = load_config(here / "chignolin_10ns.toml")["sampling"]  # 10 ns in all: frames (all replicas) x steps x dt
    assert ten["frames"] * ten["save_every"] * ten["timestep_fs"] == pytest.approx(1e7)
    shipped, _ = _topology_positions((here / "chignolin.pdb").read_text())
    fresh, _ = _topology_positions(build_peptide("GYDPETGTWG", caps="zwitterion", minimize=False))
    names = lambda p: [(a.residue.name, a.name) for a in p.topology.atoms()]  # noqa: E731
    assert names(shipped) == names(fresh) and len(names(shipped)) == 138
