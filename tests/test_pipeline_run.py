"""``cgwb run --quick``: the whole chain end to end, resume after a crash, and a user trajectory config."""
from __future__ import annotations

import json

import numpy as np
import pytest

from forcefield import load_dataset

from cgwb.cli import main
from cgwb.pipeline import steps_cg
from cgwb.pipeline.run import run_pipeline


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    logs: list[str] = []
    report = run_pipeline(quick=True, out=out, progress=False, log=logs.append)
    return out, report, logs


def test_quick_run_reports_every_figure(quick_run):
    out, report, _ = quick_run
    for key in ("kernel_force_mae", "kernel_selfconsistency", "kernel_active_rounds", "cg_fes_js", "cg_fes_js_floor",
                "cg_bonded_js", "cg_stable_fraction", "cg_md_ns_per_day", "backmap_rmsd_all", "backmap_rmsd_all_plain",
                "backmap_rmsd_heavy", "backmap_recon_rmsd_all", "backmap_valid_ratio", "backmap_clash_rate",
                "mapping_n_beads", "stage_seconds"):
        assert key in report, key
    for f in ("reference.npz", "kernel.npz", "labels_test.npz", "labels_spot.npz"):
        assert (out / f).exists(), f
    # symmetry-aware RMSD is a minimum over automorphisms that include the identity
    assert report["backmap_rmsd_all"] <= report["backmap_rmsd_all_plain"] + 1e-9
    assert report["kernel_selfconsistency"] == pytest.approx(report["kernel_spot_force_mae"] / report["kernel_force_mae"])
    assert report["mapping_n_beads"] == 6
    # coverage labels: 5 frames of the 800 K run join the 30 training labels (never the held-out ones); hotter
    # frames sit higher on the xTB surface (equipartition: ~(3N-6)/2 kB ΔT ≈ 30 kcal/mol for 500 K more)
    assert report["label_hot_frames"] == 5 and report["label_train_frames"] == 35
    tr = load_dataset(out / "labels_train.npz")
    assert len(tr) == 35 and len(load_dataset(out / "labels_test.npz")) == 20
    assert tr.E[30:].mean() > tr.E[:30].mean() + 10.0
    # AA sampling speed: simulated ns (all copies, equilibration included) over the stage's MD wall time
    # quick run: REMD over 4 temperatures, 5,000 equilibration + 300 x 50 steps of 1 fs each
    assert report["aa_ns_simulated"] == pytest.approx(4 * (5000 + 300 * 50) * 1e-6)
    assert report["aa_ns_per_day"] > 0
    assert 0 <= report["cg_bonded_js_floor"] <= report["cg_bonded_js_max_floor"] <= np.log(2)
    assert report["cg_md_speedup_vs_aa"] == pytest.approx(report["cg_md_ns_per_day"] / report["aa_ns_per_day"])
    assert 0 < report["kernel_force_mae"] < 20  # kcal/mol/Å, GFN2-xTB forces of a 22-atom peptide
    assert 0 <= report["cg_fes_js"] <= np.log(2) and 0 <= report["cg_bonded_js"] <= np.log(2)
    assert 0 < report["backmap_rmsd_all"] < 5
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["kernel_force_mae"] == pytest.approx(report["kernel_force_mae"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Kernel force field" in html


def test_rerun_skips_finished_stages(quick_run):
    out, report, _ = quick_run
    logs: list[str] = []
    again = run_pipeline(quick=True, out=out, progress=False, log=logs.append)
    assert sum("up to date, skipped" in line for line in logs) == len(report["stage_seconds"])
    assert again["kernel_force_mae"] == report["kernel_force_mae"]


def test_evaluation_settings_do_not_retrain(quick_run, tmp_path, monkeypatch):
    """Changing only how the backmapper and CG model are evaluated or simulated re-runs those stages alone."""
    import shutil

    from cgwb.pipeline.config import load_config

    out, report, _ = quick_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[backmap]\nsamples = 3\n[cg]\nreplicas = 3\nbead_masses = "represented"\n')
    from cg import Mapping
    from cg.simulate import CGTrajectory

    # the learned map here holds every atom (represented = mapped masses): double them to see them reach the MD
    monkeypatch.setattr(Mapping, "represented_masses", lambda self: 2.0 * self.masses)
    logs: list[str] = []
    again = run_pipeline(load_config(cfg, quick=True), out=folder, progress=False, log=logs.append)
    ran = [line.split("]")[0][1:] for line in logs if line.endswith("running")]
    assert ran == ["cg_md", "backmap_eval", "backmap_cg"], ran
    assert again["backmap_samples"] == 3 and report["backmap_samples"] == 2
    # the CG MD ran with the represented masses (the model keeps its mapped ones)
    m = Mapping.load(folder / "mapping.json")
    assert again["cg_md_bead_masses"] == "represented" and report["cg_md_bead_masses"] == "mapped"
    assert np.allclose(CGTrajectory.load(folder / "cg_md.npz").masses, 2.0 * m.masses)


def test_crash_midway_resumes_from_finished_stages(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(steps_cg, "cg_train", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(quick=True, out=tmp_path, progress=False, log=lambda s: None)
    assert (tmp_path / "mapping.json").exists() and not (tmp_path / "cg_potential.pt").exists()
    monkeypatch.undo()
    logs: list[str] = []
    run_pipeline(quick=True, out=tmp_path, progress=False, log=logs.append, stop_after="cg_train")
    skipped = [line.split("]")[0][1:] for line in logs if "skipped" in line]
    assert skipped == ["aa_sampling", "labels", "kernel_train", "kernel_learn", "kernel_md", "kernel_check",
                       "mapping"]
    assert (tmp_path / "cg_potential.pt").exists()


def test_config_with_mdanalysis_trajectory_with_forces(tmp_path):
    from MDAnalysisTests.datafiles import PDB_xvf, TRR_xvf

    cfg = tmp_path / "cobrotoxin.toml"
    cfg.write_text(f'''name = "cobrotoxin"
[system]
topology = "{PDB_xvf}"
trajectory = "{TRR_xvf}"
selection = "protein and resid 1-8"
[reference]
forces = "trajectory"
[mapping]
kind = "preset"
preset = "residue"
''')
    assert main(["run", "--config", str(cfg), "--quick", "-o", str(tmp_path / "run"), "-q"]) == 0
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["mapping_n_beads"] == 8 and rep["reference_forces"] == "trajectory"


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[mapping]\nkind = "preset"\npreset = "nonsense"\n')
    assert main(["run", "--config", str(cfg), "-o", str(tmp_path / "run")]) == 2
    assert "unknown preset 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_and_pipeline_give_the_same_model(tmp_path):
    """`cgwb cg train` and the pipeline's cg_train stage call one recipe: same inputs and seed, same weights."""
    import torch

    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "same"\nseed = 3\n[reference]\nforces = "openmm"\n[mapping]\nkind = "preset"\n'
                   'preset = "backbone"\n[cg]\nepochs = 3\nlr = 0.002\nbatch_size = 64\npatience = 5\n'
                   'force_map = "optimal"\n')
    run = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--quick", "-o", str(run), "-q", "--stop-after", "cg_train"]) == 0
    out = tmp_path / "cli.pt"
    assert main(["cg", "train", str(run / "reference.npz"), "-m", str(run / "mapping.json"), "-o", str(out),
                 "--epochs", "3", "--lr", "0.002", "--batch", "64", "--patience", "5", "--force-map", "optimal",
                 "--seed", "3", "-T", "300", "-q", "--no-resume"]) == 0
    a = torch.load(run / "cg_potential.pt", weights_only=True)
    b = torch.load(out, weights_only=True)
    ka = {k: v for k, v in a["net_state"].items()} if "net_state" in a else a
    kb = {k: v for k, v in b["net_state"].items()} if "net_state" in b else b
    assert ka.keys() == kb.keys() and len(ka) > 0
    for k in ka:
        if torch.is_tensor(ka[k]):
            assert torch.equal(ka[k], kb[k]), k
    # a different seed gives a different network: the comparison can fail
    out2 = tmp_path / "cli2.pt"
    assert main(["cg", "train", str(run / "reference.npz"), "-m", str(run / "mapping.json"), "-o", str(out2),
                 "--epochs", "3", "--lr", "0.002", "--batch", "64", "--patience", "5", "--force-map", "optimal",
                 "--seed", "4", "-T", "300", "-q", "--no-resume"]) == 0
    c = torch.load(out2, weights_only=True)
    kc = c["net_state"] if "net_state" in c else c
    assert any(torch.is_tensor(ka[k]) and not torch.equal(ka[k], kc[k]) for k in ka)
