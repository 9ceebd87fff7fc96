"""``cgwb backmap train | sample | evaluate`` end to end on a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cgwb.cli import main


def test_help_for_every_subcommand(capsys):
    for sub in ("train", "sample", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main(["backmap", sub, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_train_sample_evaluate(ala_md, ala_pdb, tmp_path, capsys):
    from backmap.universe import cg_universe
    from cg.mapping import Mapping
    from forcefield.elements import masses
    from forcefield.universe import write_universe

    data = ala_md.subset(np.arange(40))
    write_universe(data.to_universe(topology=str(ala_pdb)), tmp_path / "aa.dcd")  # + aa.pdb
    beads = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21]]
    mapping = Mapping.from_indices(beads, masses(ala_md.z), "cog", names=["ACE", "ALA", "NME"])
    mapping.save(tmp_path / "map.json")
    assert main(["backmap", "train", str(tmp_path / "aa.pdb"), str(tmp_path / "aa.dcd"), "-m", str(tmp_path / "map.json"), "-o",
                 str(tmp_path / "m.pt"), "--epochs", "1", "--hidden", "8", "--latent", "2", "-q"]) == 0
    ref = data.subset(np.arange(5))
    write_universe(cg_universe(mapping.map_positions(ref.R), mapping.names), tmp_path / "cg.dcd")
    write_universe(ref.to_universe(topology=str(ala_pdb)), tmp_path / "ref.dcd")
    assert main(["backmap", "sample", str(tmp_path / "m.pt"), str(tmp_path / "cg.pdb"), str(tmp_path / "cg.dcd"),
                 "-n", "2", "-o", str(tmp_path / "out.dcd"), "-q"]) == 0
    assert (tmp_path / "out.pdb").exists()
    assert main(["backmap", "evaluate", str(tmp_path / "out.pdb"), str(tmp_path / "out.dcd"), "--ref",
                 str(tmp_path / "ref.pdb"), "--ref-traj", str(tmp_path / "ref.dcd"), "--json",
                 str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n_frames"] == 5 and m["n_samples"] == 2 and 0.0 <= m["valid_ratio"] <= 1.0
    # a CG trajectory with the wrong bead count is a clear error (exit code 2), not a traceback
    write_universe(cg_universe(np.zeros((2, 4, 3)) + np.arange(4)[None, :, None]), tmp_path / "cg4.dcd")
    capsys.readouterr()
    assert main(["backmap", "sample", str(tmp_path / "m.pt"), str(tmp_path / "cg4.pdb"), str(tmp_path / "cg4.dcd"),
                 "-o", str(tmp_path / "bad.dcd"), "-q"]) == 2
    assert "4 beads, but the model was trained for 3" in capsys.readouterr().err
