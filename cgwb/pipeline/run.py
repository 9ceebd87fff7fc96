"""``cgwb run``: the whole chain, resumable stage by stage.

AA sampling (OpenMM) → GFN2-xTB labels of a subset → kernel force field → AA MD with the kernel force
field (the reference) → CG mapping (learned, 6 beads by default) → force-matched CG potential → CG MD →
backmapping → evaluation and report.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from cg.forcematching import ForceMatchingConfig

from .config import RunConfig, load_config
from .report import write_report
from .stages import RunContext, Stage, StageRunner
from . import steps, steps_cg


#: backmapping settings that only change the evaluation (held-out figures), not the trained model
BACKMAP_EVAL_KEYS = ("frames", "samples", "temperature", "relax", "relax_k", "relax_hold")


def build_stages(cfg: RunConfig) -> list[Stage]:
    """The stages for a configuration, each with the config sections and files that fingerprint it."""
    d = cfg.data
    system = {"system": d["system"], "sampling": d["sampling"], "seed": d["seed"],
              "coverage": steps.coverage_run(d)}
    sysfiles = [str(cfg.path(p)) for p in (d["system"]["pdb"], d["system"]["topology"], d["system"]["trajectory"]) if p]
    st = [Stage("aa_sampling", steps.aa_sampling, ["aa.npz", "topology.pdb"], sysfiles, system)]
    if d["reference"]["forces"] == "kernel":
        ds = [str(cfg.path(d["reference"]["dataset"]))] if d["reference"]["dataset"] else []
        st += [
            Stage("labels", steps.labels, ["labels_train.npz", "labels_test.npz"], ["aa.npz", *ds], d["reference"]),
            Stage("kernel_train", steps.kernel_train, ["kernel_seed.npz"], ["labels_train.npz", "labels_test.npz"],
                  {"sigma": d["reference"]["sigma"], "device": d["device"]}),
            Stage("kernel_learn", steps.kernel_learn, ["kernel.npz"], ["kernel_seed.npz", "labels_train.npz",
                                                                       "labels_test.npz", "aa.npz"],
                  {"active": d["active"], "kernel_md": d["kernel_md"], "T": d["system"]["temperature"],
                   "seed": d["seed"]}),
            Stage("kernel_md", steps.kernel_md, ["reference.npz"], ["kernel.npz", "aa.npz"],
                  {"kernel_md": d["kernel_md"], "T": d["system"]["temperature"], "seed": d["seed"]}),
            Stage("kernel_check", steps.kernel_check, ["labels_spot.npz"], ["kernel.npz", "reference.npz",
                                                                             "labels_test.npz"],
                  {"spot": d["reference"]["spot_frames"], "seed": d["seed"]}),
        ]
    else:
        st.append(Stage("reference", steps.reference_direct, ["reference.npz"], ["aa.npz"], d["reference"]))
    mfile = [str(cfg.path(d["mapping"]["file"]))] if d["mapping"]["file"] else []
    fit_keys = {k: v for k, v in d["cg"].items() if k in ForceMatchingConfig.model_fields}
    st += [
        Stage("mapping", steps_cg.mapping, ["mapping.json"], ["reference.npz", "topology.pdb", *mfile],
              {"mapping": d["mapping"], "seed": d["seed"]}),
        Stage("cg_train", steps_cg.cg_train, ["cg_potential.pt"], ["reference.npz", "mapping.json"],
              {"cg": fit_keys, "seed": d["seed"]}),  # CG MD settings do not retrain the model
        Stage("cg_md", steps_cg.cg_md, ["cg_md.npz"], ["reference.npz", "mapping.json", "cg_potential.pt"],
              {"cg": d["cg"], "kernel_md": d["kernel_md"], "sampling": d["sampling"], "seed": d["seed"]}),
        Stage("backmap_train", steps_cg.backmap_train, ["backmap.pt"], ["reference.npz", "mapping.json"],
              {"backmap": {k: v for k, v in d["backmap"].items() if k not in (*BACKMAP_EVAL_KEYS, "cg_frames")},
               "seed": d["seed"]}),  # evaluation settings do not retrain the backmapper
        Stage("backmap_eval", steps_cg.backmap_eval, ["backmap_eval.json"], ["backmap.pt", "reference.npz"],
              {"backmap": {k: v for k, v in d["backmap"].items() if k in BACKMAP_EVAL_KEYS}, "seed": d["seed"]}),
        Stage("backmap_cg", steps_cg.backmap_cg, ["backmapped.npz"], ["backmap.pt", "cg_md.npz", "reference.npz"],
              {"seed": d["seed"], "cg_frames": d["backmap"]["cg_frames"],
               "temperature": d["backmap"]["temperature"]}),
    ]
    return st


PLOTS = ["fes_aa_vs_cg.png", "kernel_active.png", "cg_bonded.png", "cg_training.png", "kernel_parity.png"]


def run_pipeline(config: str | os.PathLike | RunConfig | None = None, out: str | os.PathLike | None = None,
                 quick: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                 stop_after: str | None = None) -> dict[str, Any]:
    """Run (or resume) the pipeline; returns the report dictionary (also written to ``report.json``).

    Parameters
    ----------
    config : a TOML/YAML path, a :class:`RunConfig`, or None for the embedded default (alanine dipeptide).
    out : run folder (default ``runs/<name>``, ``runs/<name>-quick`` with ``quick``).
    quick : shrink every stage for a smoke run.
    stop_after : run the stages up to and including this one (for debugging and tests).
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config, quick=quick)
    folder = Path(out) if out else Path("runs") / (cfg["name"] + ("-quick" if quick else ""))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.to_json())
    ctx = RunContext(folder=folder, config=cfg, progress=progress, log=log)
    runner = StageRunner(ctx)
    for stage in build_stages(cfg):
        runner.run(stage)
        if stop_after == stage.name:
            break
    _kernel_plot(ctx)
    report = write_report(folder, ctx.results, ctx.seconds, PLOTS, title=f"cgworkbench run: {cfg['name']}")
    log(f"report: {folder / 'report.html'}")
    return report


def _kernel_plot(ctx: RunContext) -> None:
    """Parity plot of kernel-FF forces on the held-out labels (when a kernel FF was trained)."""
    if not ctx.file("kernel.npz").exists() or ctx.file("kernel_parity.png").exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forcefield import KernelForceField, load_dataset

    te = load_dataset(ctx.file("labels_test.npz"))
    _, F = KernelForceField.load(ctx.file("kernel.npz")).predict(te.R)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(te.F.ravel(), F.ravel(), ".", ms=1, alpha=0.4)
    lim = float(abs(te.F).max())
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.5)
    ax.set_xlabel("GFN2-xTB force (kcal/mol/Å)")
    ax.set_ylabel("kernel FF force (kcal/mol/Å)")
    ax.set_title(f"held-out frames, MAE {abs(F - te.F).mean():.2f}")
    fig.tight_layout()
    fig.savefig(ctx.file("kernel_parity.png"), dpi=110)
    plt.close(fig)
