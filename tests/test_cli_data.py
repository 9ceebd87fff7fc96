"""``cgwb data``: the CLI layer over the reference-data API."""
from __future__ import annotations

import numpy as np
import pytest

from cgwb.cli import main
from forcefield import load_dataset


def test_every_subcommand_has_help(capsys):
    from cgwb.cli import GROUPS, build_parser

    build_parser()
    for group in ["data"]:
        with pytest.raises(SystemExit) as e:
            main([group, "--help"])
        assert e.value.code == 0
    for sub in ["md", "label", "info", "convert"]:
        with pytest.raises(SystemExit) as e:
            main(["data", sub, "--help"])
        assert e.value.code == 0
    assert GROUPS


def test_md_label_info_convert(tmp_path, capsys):
    out = tmp_path / "aa.npz"
    assert main(["data", "md", "-n", "4", "--save-every", "10", "--equilibrate", "0", "-o", str(out), "-q"]) == 0
    ds = load_dataset(out)
    assert ds.R.shape == (4, 22, 3)
    lab = tmp_path / "lab.npz"
    assert main(["data", "label", str(out), "-o", str(lab), "--max-frames", "2", "-q"]) == 0
    assert load_dataset(lab).theory == "GFN2-xTB"
    assert main(["data", "info", str(lab)]) == 0
    assert "md5" in capsys.readouterr().out
    trr = tmp_path / "aa.trr"
    assert main(["data", "convert", str(out), "-o", str(trr)]) == 0
    back = tmp_path / "back.npz"
    assert main(["data", "convert", str(tmp_path / "aa.pdb"), str(trr), "-o", str(back)]) == 0
    np.testing.assert_allclose(load_dataset(back).F, ds.F, rtol=1e-4, atol=1e-3)


def test_cli_reports_bad_input_cleanly(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
