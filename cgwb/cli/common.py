"""Argument helpers shared by the ``cgwb`` command groups."""
from __future__ import annotations

import argparse


def add_group(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse._SubParsersAction:
    """Add a command group ``name`` and return its sub-command parsers."""
    g = sub.add_parser(name, help=help_, description=help_)
    g.set_defaults(func=lambda a, g=g: (g.print_help(), 0)[1])
    return g.add_subparsers(dest="command", metavar="SUBCOMMAND")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def pick_device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"
