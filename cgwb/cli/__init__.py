"""``cgwb``: the workbench's command line, a thin layer over the Python API.

Each command group lives in its own module of this package and exposes ``register(subparsers)``;
groups are imported only when the CLI starts, and each command imports its heavy modules lazily.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from forcefield.errors import InputError

#: (group name, module, help)
GROUPS = [
    ("data", "cgwb.cli.data", "reference data: OpenMM MD, GFN2-xTB labels, dataset conversion"),
    ("kernel", "cgwb.cli.kernel", "kernel global force field: train, test, label, MD"),
    ("map", "cgwb.cli.mapping", "CG mappings: learn (autoencoder) or apply to trajectories"),
    ("cg", "cgwb.cli.cgpot", "CG potential: force matching, CG MD, evaluation"),
    ("backmap", "cgwb.cli.backmap", "backmapping: train, sample, evaluate"),
    ("diffsim", "cgwb.cli.diffsim", "differentiable simulation: fit pair potentials to RDFs (vs IBI)"),
    ("export", "cgwb.cli.export", "export trained models to other engines (OpenMM via openmm-torch)"),
    ("run", "cgwb.cli.run", "the whole pipeline on the embedded default or a config file"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cgwb", description="cgworkbench: coarse-graining and backmapping workbench")
    p.add_argument("--version", action="version", version="cgworkbench 0.1.0")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: all cores; on a machine shared with other jobs, fewer "
                        "threads avoid oversubscription, which can slow small kernels down by an order of magnitude)")
    sub = p.add_subparsers(dest="group", metavar="COMMAND")
    for name, module, help_ in GROUPS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # group not built yet
            raise
        mod.register(sub, name, help_)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.group is None else 2
    threads = args.threads if args.threads is not None else getattr(args, "run_threads", None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"cgwb: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
