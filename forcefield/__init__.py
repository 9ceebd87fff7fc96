"""cgworkbench ``forcefield``: reference data (OpenMM, GFN2-xTB, sGDML-format datasets), shared
geometry and I/O, and the kernel global force field.

Units everywhere: Å, kcal/mol, kcal/mol/Å, fs, K, amu.
"""
from __future__ import annotations

from .dataset import Dataset, load_dataset, sgdml_md5
from .errors import InputError
from .kernel import KernelForceField
from .universe import open_universe

__all__ = ["Dataset", "InputError", "KernelForceField", "load_dataset", "open_universe", "sgdml_md5"]

__version__ = "0.1.0"
