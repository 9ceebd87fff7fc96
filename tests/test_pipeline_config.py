"""``cgwb run`` configuration: defaults, quick mode, and bad configs failing at once with clear messages."""
from __future__ import annotations

import pytest

from cgwb.pipeline.config import load_config
from forcefield import InputError


def test_default_and_quick():
    cfg = load_config()
    assert cfg["mapping"]["kind"] == "learned" and cfg["mapping"]["n_beads"] == 6
    q = load_config(quick=True)
    assert q["sampling"]["frames"] < cfg["sampling"]["frames"]


def test_toml_and_yaml(tmp_path, ala_pdb):
    t = tmp_path / "c.toml"
    t.write_text(f'name = "x"\n[system]\npdb = "{ala_pdb}"\n[mapping]\nkind = "preset"\npreset = "backbone"\n')
    assert load_config(t)["mapping"]["preset"] == "backbone"
    y = tmp_path / "c.yaml"
    y.write_text(f"system:\n  pdb: {ala_pdb}\nmapping:\n  n_beads: 4\n")
    assert load_config(y)["mapping"]["n_beads"] == 4


@pytest.mark.parametrize("body, message", [
    ('[system]\npdb = "nowhere.pdb"\n', "system.pdb = 'nowhere.pdb': no such file"),
    ('[mapping]\nkind = "preset"\npreset = "blobs"\n', "unknown preset 'blobs'"),
    ('[mapping]\nn_beads = 40\n', "larger than the number of atoms (22)"),
    ('[reference]\nforces = "magic"\n', "reference.forces = 'magic'"),
    ('[mapping]\nbeads = 3\n', "unknown field 'mapping.beads'"),
    ('[sampling]\nframes = -5\n', "sampling.frames = -5: Input should be greater than 0"),
    ('[cg]\ntimestep_fs = "fast"\n', "cg.timestep_fs = 'fast'"),
    ('[kernel_md]\nreplicas = 2.5\n', "kernel_md.replicas = 2.5"),
    ('[backmap]\nepochs = true\n', "backmap.epochs = True"),
    ('[system]\nsolvent = "water"\n', "system.solvent = 'water'"),
    ('[sampling]\nhydrogen_mass = 0.5\n', "sampling.hydrogen_mass = 0.5: Input should be greater than or equal to 1"),
    ('[sampling]\nworkers = 0\n', "sampling.workers = 0"),
    ('[system\n', "cannot parse config"),
])
def test_bad_config_fails_fast(tmp_path, body, message):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_config(p)
    assert message in str(e.value) and "bad.toml" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "none.toml")
