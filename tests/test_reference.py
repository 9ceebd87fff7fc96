"""Reference engines: OpenMM and GFN2-xTB forces are minus the gradient of their energies."""
from __future__ import annotations

import numpy as np
import pytest

from forcefield import InputError


def _fd_check(energy_forces, r, idx, h):
    """Central differences of E at coordinates idx = [(atom, axis), ...] against the returned forces."""
    _, F = energy_forces(r)
    for a, k in idx:
        rp, rm = r.copy(), r.copy()
        rp[a, k] += h
        rm[a, k] -= h
        fd = -(energy_forces(rp)[0] - energy_forces(rm)[0]) / (2 * h)
        assert fd == pytest.approx(F[a, k], rel=2e-3, abs=2e-3), (a, k, fd, F[a, k])


def test_openmm_md_returns_gradient_forces(ala_pdb, ala_md):
    from forcefield.reference import openmm_energy_forces

    assert ala_md.R.shape == (200, 22, 3) and ala_md.F.shape == (200, 22, 3)
    assert "pdb" in ala_md.extra and ala_md.extra["atom_names"][0] == "CH3"
    r = ala_md.R[7].copy()
    E, F = openmm_energy_forces(ala_pdb, r[None])
    np.testing.assert_allclose(E[0], ala_md.E[7], atol=1e-4)
    np.testing.assert_allclose(F[0], ala_md.F[7], atol=1e-3)

    def ef(x):
        e, f = openmm_energy_forces(ala_pdb, x[None])
        return e[0], f[0]

    _fd_check(ef, r, [(0, 0), (8, 1), (15, 2), (21, 0)], h=1e-4)


def test_openmm_md_samples_the_temperature(ala_md):
    # Vacuum alanine dipeptide at 300 K: potential energy fluctuates by a few kcal/mol, no blow-up.
    assert np.isfinite(ala_md.E).all()
    assert 1.0 < ala_md.E.std() < 10.0
    bond = np.linalg.norm(ala_md.R[:, 4] - ala_md.R[:, 5], axis=-1)  # ACE C=O
    assert 1.15 < bond.mean() < 1.30


def test_openmm_obc2(ala_pdb):
    from forcefield.reference import openmm_energy_forces, run_openmm_md

    ds = run_openmm_md(ala_pdb, n_frames=3, save_every=10, equilibration_steps=0, solvent="obc2", progress=False)
    e_vac, _ = openmm_energy_forces(ala_pdb, ds.R[:1])
    e_obc, f_obc = openmm_energy_forces(ala_pdb, ds.R[:1], solvent="obc2")
    np.testing.assert_allclose(e_obc, ds.E[:1], atol=1e-4)
    assert e_obc[0] < e_vac[0] - 5.0  # solvation lowers the energy of a polar peptide


def test_xtb_forces_are_minus_gradient(ala_md):
    from forcefield.reference import XTB

    calc = XTB(ala_md.z)
    r = ala_md.R[3].copy()
    _fd_check(calc, r, [(0, 0), (6, 1), (11, 2)], h=1e-3)


def test_xtb_label_dataset_and_units(ala_md):
    from forcefield.reference import label_dataset

    lab = label_dataset(ala_md[:3], progress=False)
    assert lab.theory == "GFN2-xTB"
    # GFN2-xTB total energy of alanine dipeptide is about -32.9 Hartree = -20,650 kcal/mol
    assert -21000 < lab.E.mean() < -20300
    assert 5 < np.sqrt((lab.F**2).mean()) < 60


def test_xtb_md_runs(ala_md):
    from forcefield.reference import xtb_md

    ds = xtb_md(ala_md.R[0], ala_md.z, n_frames=3, save_every=2, dt_fs=0.5, temperature=300, progress=False)
    assert ds.R.shape == (3, 22, 3) and np.isfinite(ds.F).all()


def test_bad_inputs_for_engines(tmp_path):
    from forcefield.reference import run_openmm_md, xtb_energy_forces

    with pytest.raises(InputError, match="no such file"):
        run_openmm_md(tmp_path / "none.pdb", n_frames=1, progress=False)
    with pytest.raises(InputError, match="unknown solvent"):
        run_openmm_md(tmp_path / "none.pdb", solvent="water", progress=False)
    R = np.zeros((2, 3, 3))
    R[1, 0, 0] = np.nan
    with pytest.raises(InputError, match="frame 1"):
        xtb_energy_forces(R + np.eye(3) * 0.9, np.array([8, 1, 1]), progress=False)
