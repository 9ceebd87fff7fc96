"""``cgwb diffsim``: target -> fit (DiffSim and IBI) -> eval, on a tiny system."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cg.cli import main


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
                 "--eval-steps", "100", "--vacf-weight", "1", "-q"]) == 0
    for f in ("potential.pt", "potential.npz", "potential.csv", "u.png", "rdf.png", "fit.json"):
        assert (out / f).stat().st_size > 0, f
    info = json.loads((out / "fit.json").read_text())
    assert info["method"] == "diffsim" and len(info["history"]) == 2 and "vacf_loss" in info["history"][0]
    outi = tmp_path / "ibi"
    assert main(["diffsim", "fit", t, "-o", str(outi), "--method", "ibi", "--steps", "1", "--ibi-steps", "100",
                 "--replicas", "1", "--eval-steps", "0", "-q"]) == 0
    assert main(["diffsim", "eval", str(outi / "potential.npz"), t, "--steps", "100", "--replicas", "1", "-q"]) == 0
    assert "g(r) MAE" in capsys.readouterr().out
    # clear errors for bad input
    assert main(["diffsim", "eval", str(tmp_path / "missing.pt"), t]) == 2
    assert main(["diffsim", "fit", str(out / "potential.npz"), "-o", str(tmp_path / "x")]) == 2
    assert "not a diffsim target file" in capsys.readouterr().err
