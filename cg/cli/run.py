"""``cgwb run``: the workbench's main job on the embedded default (alanine dipeptide).

Current stages: OpenMM reference MD and GFN2-xTB labels of a subset, with a printed summary.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_quiet


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="Run the pipeline on the embedded default (alanine dipeptide).")
    p.add_argument("-o", "--out", default="runs/alanine-dipeptide", help="run folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=10000, help="AA frames (default: %(default)s)")
    p.add_argument("--label", type=int, default=1000, help="frames to label with GFN2-xTB (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    add_quiet(p)
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    from forcefield import load_dataset
    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.reference import label_dataset, run_openmm_md

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n_frames, n_label = (500, 50) if a.quick else (a.frames, a.label)
    seconds = {}
    aa_path = out / "aa_openmm.npz"
    t0 = time.perf_counter()
    if aa_path.exists():
        aa = load_dataset(aa_path)
    else:
        aa = run_openmm_md(alanine_dipeptide_pdb(), n_frames=n_frames, save_every=100, progress=not a.quiet)
        aa.save(aa_path)
    seconds["aa_md"] = time.perf_counter() - t0
    print(aa.summary())
    xtb_path = out / "xtb_labels.npz"
    t0 = time.perf_counter()
    if xtb_path.exists():
        lab = load_dataset(xtb_path)
    else:
        step = max(1, len(aa) // n_label)
        lab = label_dataset(aa.subset(slice(0, None, step))[:n_label], progress=not a.quiet)
        lab.save(xtb_path)
    seconds["xtb_label"] = time.perf_counter() - t0
    print(lab.summary())
    report = {"aa_frames": len(aa), "xtb_frames": len(lab), "stage_seconds": seconds}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0
