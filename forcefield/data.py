"""Paths of the structures shipped with the workbench (``data/`` in the repository, packaged alongside)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir() -> Path:
    """Folder with the shipped data files."""
    for cand in (_HERE / "_data", _HERE.parent / "data"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("the shipped data folder was not found; reinstall cgworkbench")


def alanine_dipeptide_pdb() -> Path:
    """ACE-ALA-NME (22 atoms, amber14 names) minimised in vacuum."""
    return data_dir() / "alanine-dipeptide.pdb"
