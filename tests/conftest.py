"""Shared fixtures: the shipped alanine dipeptide and a short OpenMM trajectory of it."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ala_pdb():
    from forcefield.data import alanine_dipeptide_pdb

    return alanine_dipeptide_pdb()


@pytest.fixture(scope="session")
def ala_md(ala_pdb):
    """200 frames of alanine dipeptide (OpenMM amber14, vacuum, 300 K, 50 fs apart)."""
    from forcefield.reference import run_openmm_md

    return run_openmm_md(ala_pdb, n_frames=200, save_every=50, equilibration_steps=2000, seed=1, progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small systems are faster so on a shared 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
