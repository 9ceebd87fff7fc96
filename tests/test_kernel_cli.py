"""``cgwb kernel train | test | label | md`` end to end on the tiny ethanol data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cgwb.cli import main
from forcefield import KernelForceField, load_dataset

DATA = Path(__file__).parent / "data" / "ethanol_xtb.npz"


def test_kernel_cli(tmp_path):
    m = tmp_path / "m.npz"
    assert main(["kernel", "train", str(DATA), "-n", "15", "--n-valid", "10", "--sigma", "5", "10", "-o", str(m),
                 "-q", "--device", "cpu"]) == 0
    ff = KernelForceField.load(m)
    assert ff.sigma_ in (5.0, 10.0) and ff._d.shape[0] == 15
    js = tmp_path / "t.json"
    assert main(["kernel", "test", str(m), str(DATA), "--json", str(js), "--device", "cpu"]) == 0
    res = json.loads(js.read_text())
    ds = load_dataset(DATA)
    E, F = ff.predict(ds.R)
    assert np.isclose(res["force_mae"], np.abs(F - ds.F).mean())
    lab = tmp_path / "lab.npz"
    assert main(["kernel", "label", str(m), str(DATA), "-o", str(lab), "--device", "cpu"]) == 0
    assert np.allclose(load_dataset(lab).F, F)
    md = tmp_path / "md.npz"
    assert main(["kernel", "md", str(m), str(DATA), "-B", "2", "--steps", "20", "--save-every", "5", "-q",
                 "-o", str(md), "--device", "cpu"]) == 0
    assert len(load_dataset(md)) == 8
    assert main(["kernel", "test", str(tmp_path / "missing.npz"), str(DATA)]) == 2
    me = tmp_path / "me.npz"
    assert main(["kernel", "train", str(DATA), "-n", "12", "--sigma", "10", "--energy-constraints", "-o", str(me),
                 "-q", "--device", "cpu"]) == 0
    assert KernelForceField.load(me).energy_constraints


@pytest.mark.parametrize("sub", ["train", "test", "label", "md"])
def test_kernel_cli_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["kernel", sub, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
