"""``cgwb diffsim``: target -> fit (DiffSim and IBI) -> eval, on a tiny system."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cgwb.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_target_fit_eval(tmp_path, capsys):
    t = str(tmp_path / "t.npz")
    assert main(["diffsim", "target", "-o", t, "--state", "0.3:1.2", "--particles", "128", "--replicas", "1",
                 "--equil", "100", "--steps", "200", "--vacf-lag", "4", "-q"]) == 0
    d = np.load(t, allow_pickle=False)
    assert d["g"].shape == (1, 100) and abs(d["g"][0, -20:].mean() - 1.0) < 0.3
    assert d["vacf"].shape == (1, 4) and abs(d["vacf"][0, 0] - 1.0) < 1e-12
    out = tmp_path / "fit"
    assert main(["diffsim", "fit", t, "-o", str(out), "--steps", "2", "--tau", "40", "--replicas", "1",
                 "--eval-steps", "100", "--vacf-weight", "1", "--final-steps", "1", "--final-tau", "60", "-q"]) == 0
    for f in ("potential.pt", "potential.npz", "potential.csv", "u.png", "rdf.png", "fit.json"):
        assert (out / f).stat().st_size > 0, f
    info = json.loads((out / "fit.json").read_text())
    assert info["method"] == "diffsim" and len(info["history"]) == 2 and "vacf_loss" in info["history"][0]
    assert [h["tau"] for h in info["history"]] == [40, 60]  # final phase: longer windows
    outi = tmp_path / "ibi"
    assert main(["diffsim", "fit", t, "-o", str(outi), "--method", "ibi", "--steps", "1", "--ibi-steps", "100",
                 "--replicas", "1", "--eval-steps", "0", "-q"]) == 0
    assert main(["diffsim", "eval", str(outi / "potential.npz"), t, "--steps", "100", "--replicas", "1", "-q"]) == 0
    assert "g(r) MAE" in capsys.readouterr().out
    # clear errors for bad input
    assert main(["diffsim", "eval", str(tmp_path / "missing.pt"), t]) == 2
    assert main(["diffsim", "fit", str(out / "potential.npz"), "-o", str(tmp_path / "x")]) == 2
    assert "not a diffsim target file" in capsys.readouterr().err
    assert main(["diffsim", "fit", t, "-o", str(tmp_path / "z"), "--steps", "2", "--final-steps", "3"]) == 2


def test_cli_mixture_partial_and_temperature_dependent(tmp_path, capsys):
    """Mixture targets (partial RDFs -> one potential per type pair) and two temperatures (u(r; T))."""
    t = str(tmp_path / "mix.npz")
    assert main(["diffsim", "target", "-o", t, "--state", "0.3:1.2", "--mixture", "1,1;0.7,1.15;0.5,1.3",
                 "--composition", "0.5,0.5", "--partial", "--particles", "100", "--replicas", "1", "--equil", "50",
                 "--steps", "100", "-q"]) == 0
    d = np.load(t, allow_pickle=False)
    assert d["g"].shape == (1, 3, 100) and d["composition"].tolist() == [[0.5, 0.5]]
    out = tmp_path / "mixfit"
    assert main(["diffsim", "fit", t, "-o", str(out), "--steps", "1", "--tau", "20", "--replicas", "1",
                 "--eval-steps", "50", "-q"]) == 0
    for f in ("potential.pt", "potential_0-1.csv", "potential_1-1.npz", "u.png", "rdf.png"):
        assert (out / f).stat().st_size > 0, f
    assert main(["diffsim", "eval", str(out / "potential.pt"), t, "--steps", "50", "--replicas", "1", "-q"]) == 0
    assert main(["diffsim", "fit", t, "-o", str(tmp_path / "x"), "--method", "ibi"]) == 2
    t2 = str(tmp_path / "twoT.npz")
    assert main(["diffsim", "target", "-o", t2, "--state", "0.3:1.2", "--state", "0.3:2.0", "--particles", "100",
                 "--replicas", "1", "--equil", "50", "--steps", "100", "-q"]) == 0
    out2 = tmp_path / "ent"
    assert main(["diffsim", "fit", t2, "-o", str(out2), "--steps", "1", "--tau", "20", "--replicas", "1",
                 "--eval-steps", "50", "--temperature-dependent", "--init", "pmf", "-q"]) == 0
    assert (out2 / "potential_T2.csv").stat().st_size > 0 and (out2 / "potential_T1.2.npz").stat().st_size > 0
    assert main(["diffsim", "eval", str(out2 / "potential.pt"), t2, "--steps", "50", "--replicas", "1", "-q"]) == 0
    assert "rho0.3_T2: g(r) MAE" in capsys.readouterr().out
    assert main(["diffsim", "fit", t, "-o", str(tmp_path / "y"), "--temperature-dependent"]) == 2
