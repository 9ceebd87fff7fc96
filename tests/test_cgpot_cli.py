"""``cgwb cg train | simulate | evaluate`` end to end on a short alanine dipeptide trajectory."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cgwb.cli import main

HEAVY10 = [[0, 1, 2, 3], [4], [5], [6, 7], [8, 9], [10, 11, 12, 13], [14], [15], [16, 17], [18, 19, 20, 21]]
NAMES = ["CAY", "CY", "OY", "N", "CA", "CB", "C", "O", "NT", "CAT"]


@pytest.mark.parametrize("cmd", ["train", "simulate", "evaluate"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cg", cmd, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_train_simulate_evaluate(ala_md, tmp_path, capsys):
    from cg import Mapping
    from cg.potential import CGPotential
    from forcefield.fileio import load_npz

    data = tmp_path / "ala.npz"
    ala_md.save(data)
    mp = Mapping.from_indices(HEAVY10, ala_md.masses, names=NAMES)  # no atom bonds: taken from the dataset
    mp.save(tmp_path / "map.json")
    model = tmp_path / "pot.pt"
    assert main(["cg", "train", str(data), "-m", str(tmp_path / "map.json"), "-o", str(model), "--epochs", "2",
                 "--batch", "32", "--net", "schnet", "--hidden", "8", "--rbf", "8", "--interactions", "1", "-q",
                 "--plot", str(tmp_path / "curve.png")]) == 0
    pot = CGPotential.load(model)
    assert pot.n_beads == 10 and len(pot.bonds) == 9 and pot.net.config.get("kind", "schnet") == "schnet"
    fmodel = tmp_path / "fpot.pt"
    assert main(["cg", "train", str(data), "-m", str(tmp_path / "map.json"), "-o", str(fmodel), "--epochs", "1",
                 "--hidden", "16", "-q", "--force-map", "optimal", "--no-resume"]) == 0
    assert CGPotential.load(fmodel).net.config["kind"] == "features"
    assert (tmp_path / "curve.png").exists() and (tmp_path / "pot.pt.ckpt").exists()
    run = tmp_path / "run.npz"
    rc = main(["cg", "simulate", str(model), str(data), "-m", str(tmp_path / "map.json"), "-o", str(run), "-r", "3",
               "-n", "100", "--save-every", "10", "--traj", str(tmp_path / "cg.dcd"), "-q"])
    assert rc == 0
    d = load_npz(run)
    assert d["R"].shape == (10, 3, 10, 3) and list(d["n_valid"]) == [10, 10, 10]
    assert (tmp_path / "cg_r2.dcd").exists() and (tmp_path / "cg_r2.pdb").exists()
    out = tmp_path / "m.json"
    assert main(["cg", "evaluate", str(data), str(run), "-m", str(tmp_path / "map.json"), "--phi", "1", "3", "4", "6",
                 "--psi", "3", "4", "6", "8", "--plots", str(tmp_path / "plots"), "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["fes"]["n_ref"] == 200 and m["fes"]["n_test"] == 30 and m["stability"]["n_stable"] == 3
    assert 0 <= m["bonded_js"]["all_mean"] < np.log(2)
    assert (tmp_path / "plots" / "fes.png").exists()
    # the reference against itself: zero divergences
    assert main(["cg", "evaluate", str(data), str(data), "-m", str(tmp_path / "map.json"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["bonded_js"]["all_max"] == 0.0
    # bad input: clear error, exit code 2
    assert main(["cg", "simulate", str(model), str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
