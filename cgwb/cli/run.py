"""``cgwb run``: the whole pipeline on the embedded default (alanine dipeptide) or a user's config."""
from __future__ import annotations

import argparse

from .common import add_device, add_quiet


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    p = sub.add_parser(
        name, help=help_,
        description="Run the whole chain: AA sampling (OpenMM) -> GFN2-xTB labels -> kernel force field -> AA "
                    "kernel-FF MD -> learned CG mapping -> force-matched CG potential -> CG MD -> backmapping -> "
                    "evaluation. Stages whose outputs exist and whose inputs did not change are skipped, so an "
                    "interrupted run resumes. Writes report.json and report.html into the run folder.")
    p.add_argument("--config", default=None, help="TOML/YAML config (default: embedded alanine dipeptide)")
    p.add_argument("-o", "--out", default=None, help="run folder (default: runs/<name>[-quick])")
    p.add_argument("--quick", action="store_true", help="shrink every stage for a smoke run (minutes)")
    p.add_argument("--threads", dest="run_threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (as `cgwb --threads N run`)")
    p.add_argument("--stop-after", default=None, help="stop after this stage (e.g. kernel_train)")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    import json

    from cgwb.pipeline.config import load_config
    from cgwb.pipeline.run import run_pipeline

    over = {"device": a.device} if a.device else None
    cfg = load_config(a.config, quick=a.quick, overrides=over)
    rep = run_pipeline(cfg, out=a.out, quick=a.quick, progress=not a.quiet, stop_after=a.stop_after)
    keys = [k for k in rep if not isinstance(rep[k], (list, dict))]
    print(json.dumps({k: rep[k] for k in keys}, indent=1, default=float))
    return 0
