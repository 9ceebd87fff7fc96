"""``cgwb map``: preset -> apply -> read back; learn from a dataset; clear errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cg
from cgwb.cli import main


def test_map_cli_preset_apply_learn(ala_md, ala_pdb, tmp_path, capsys):
    import MDAnalysis as mda

    from forcefield.universe import write_universe

    ds_path = tmp_path / "ala.npz"
    ala_md.subset(slice(0, 120)).save(ds_path)
    u = ala_md.subset(slice(0, 120)).to_universe(str(ala_pdb))
    write_universe(u, tmp_path / "ala.trr")  # writes ala.pdb beside it
    assert main(["map", "preset", str(ala_pdb), "--preset", "residue", "-o", str(tmp_path / "res.json")]) == 0
    m = cg.Mapping.load(tmp_path / "res.json")
    assert m.names == ["ACE", "ALA", "NME"]
    assert main(["map", "apply", str(tmp_path / "res.json"), str(tmp_path / "ala.pdb"), str(tmp_path / "ala.trr"),
                 "-o", str(tmp_path / "cg.trr"), "-q", "--chunk", "50"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cgu = mda.Universe(str(tmp_path / "cg.pdb"), str(tmp_path / "cg.trr"))
    assert len(cgu.trajectory) == 120 and cgu.atoms.n_atoms == 3
    cgu.trajectory[7]
    assert np.allclose(cgu.atoms.positions, m.map_positions(ala_md.R[7]), atol=1e-4)
    assert np.allclose(cgu.atoms.forces / 4.184, m.map_forces(ala_md.F[7]), rtol=1e-4, atol=1e-3)
    assert main(["map", "learn", str(ds_path), "-n", "3", "--epochs", "3", "-q", "-o", str(tmp_path / "l.json"),
                 "--history", str(tmp_path / "h.json")]) == 0
    learned = cg.Mapping.load(tmp_path / "l.json")
    learned.check()
    assert (tmp_path / "h.json").exists()
    assert main(["map", "info", str(tmp_path / "l.json")]) == 0
    assert "3 beads over 22 atoms" in capsys.readouterr().out
    assert main(["map", "apply", str(tmp_path / "missing.json"), str(tmp_path / "ala.pdb"), "-o", "x.xtc"]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["learn", "preset", "apply", "info"])
def test_map_cli_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["map", sub, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
