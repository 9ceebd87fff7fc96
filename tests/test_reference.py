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


# ----------------------------------------------------------------------------- solvents, platforms, REMD
def _context_ef(system):
    import openmm
    import openmm.unit as u

    # Reference: double precision, so central differences over 1e-4 Å resolve the energy
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def ef(x):
        ctx.setPositions(x / 10.0)
        st = ctx.getState(getEnergy=True, getForces=True)
        return (st.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole),
                st.getForces(asNumpy=True).value_in_unit(u.kilocalorie_per_mole / u.angstrom))

    return ef


def test_implicit_solvents_give_gradient_forces(ala_pdb, ala_md):
    from forcefield.reference.openmm_md import build_system

    r = ala_md.R[11].copy()
    out = {}
    for solvent, fast in [("obc2", True), ("obc2", False), ("gbn2", True)]:
        system, mds = build_system(ala_pdb, solvent, fast_gb=fast)
        assert mds.solute.tolist() == list(range(22)) and not mds.explicit
        ef = _context_ef(system)
        _fd_check(ef, r, [(0, 0), (8, 1), (14, 2), (19, 0)], h=1e-4)
        out[(solvent, fast)] = ef(r)
    # the native GBSAOBCForce is the same model as amber14's implicit/obc2.xml CustomGBForce
    (e1, f1), (e2, f2) = out[("obc2", True)], out[("obc2", False)]
    assert e1 == pytest.approx(e2, abs=1e-3) and np.abs(f1 - f2).max() < 1e-3
    assert abs(out[("gbn2", True)][0] - e1) > 0.1  # a different GB model


def test_explicit_solvent_keeps_solute_atoms_and_total_forces(ala_pdb):
    from forcefield.reference import openmm_energy_forces, run_openmm_md

    ds = run_openmm_md(ala_pdb, n_frames=2, save_every=5, solvent="tip3p", equilibration_steps=0, minimize=50,
                       progress=False, seed=3)
    assert ds.R.shape == (2, 22, 3) and ds.F.shape == (2, 22, 3) and ds.E is None
    assert np.isfinite(ds.F).all() and np.isfinite(ds.extra["box_energy"]).all()
    assert ds.extra["box_energy"].max() < -1000.0  # ~700 waters: thousands of kcal/mol below zero
    co = np.linalg.norm(ds.R[:, 4] - ds.R[:, 5], axis=-1)  # ACE C=O: molecule kept whole (no wrapping)
    assert ((co > 1.1) & (co < 1.4)).all()
    # the saved forces include the water's pull: they differ from the solute's own (vacuum) forces
    _, f_vac = openmm_energy_forces(ala_pdb, ds.R)
    assert np.sqrt(((ds.F - f_vac) ** 2).mean()) > 1.0
    assert np.abs(f_vac.sum(1)).max() < 1e-2 < np.abs(ds.F.sum(1)).max()  # net solvent force on the solute


def test_platform_choice_and_errors(ala_pdb, tmp_path):
    from forcefield.reference import run_openmm_md
    from forcefield.reference.openmm_md import _platform, build_system

    vac, _ = build_system(ala_pdb, "vacuum")
    gb, _ = build_system(ala_pdb, "gbn2")
    assert _platform("auto", 22, vac).getName() == "Reference"  # tiny vacuum systems
    assert _platform(None, 22, gb).getName() in ("CUDA", "OpenCL", "CPU")  # never Reference with custom GB
    obc, _ = build_system(ala_pdb, "obc2")  # native GBSAOBCForce: Reference for small systems without a GPU
    import openmm

    names = {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}
    gpu = {"CUDA", "OpenCL"} & names
    assert _platform(None, 22, obc).getName() == ("Reference" if not gpu else _platform(None, 500, vac).getName())
    assert _platform(None, 300, obc).getName() in ("CUDA", "OpenCL", "CPU")
    assert _platform(None, 500, vac).getName() in ("CUDA", "OpenCL", "CPU")
    with pytest.raises(InputError, match="platform 'Nope' is not available"):
        _platform("Nope")
    with pytest.raises(InputError, match="unknown constraints"):
        run_openmm_md(ala_pdb, n_frames=1, constraints="some", progress=False)


def test_replica_exchange_keeps_every_temperature_canonical():
    """Exact Boltzmann samples of harmonic oscillators at four temperatures stay canonical after exchange
    sweeps (detailed balance of the Metropolis swap rule); always swapping would not."""
    from forcefield.reference.openmm_remd import exchange_probability, exchange_sweep, geometric_temperatures
    from forcefield.units import kT

    T = geometric_temperatures(300.0, 700.0, 4)
    assert T[0] == pytest.approx(300.0) and T[-1] == pytest.approx(700.0) and np.allclose(T[1:] / T[:-1], T[1] / T[0])
    beta, k = 1.0 / np.array([kT(t) for t in T]), 2.0  # U = k/2 x^2 (kcal/mol, Å)
    rng = np.random.default_rng(0)
    M = 20000
    x = rng.normal(size=(M, 4)) / np.sqrt(beta * k)
    acc = np.zeros(3)
    for sweep in range(4):
        for m in range(M):
            perm, a = exchange_sweep(beta, 0.5 * k * x[m] ** 2, rng, sweep % 2)
            x[m] = x[m, perm]
            acc += a
    var = (x**2).mean(0)
    np.testing.assert_allclose(var, 1.0 / (beta * k), rtol=0.04)
    assert (acc > 0).all() and (acc < 2 * M).all()
    swapped_always = (x[:, [1, 0, 3, 2]] ** 2).mean(0)  # what a rule that always swaps would leave
    assert abs(swapped_always[0] / var[0] - 1) > 0.15
    assert exchange_probability(1.0, 0.5, 3.0, 1.0) == 1.0  # colder slot gets the lower energy: always
    assert exchange_probability(1.0, 0.5, 1.0, 3.0) == pytest.approx(np.exp(-1.0))


def test_remd_and_hot_start_runs(ala_pdb):
    from forcefield.reference import openmm_energy_forces, run_openmm_md, run_openmm_remd

    ds = run_openmm_remd(ala_pdb, temperatures=(300.0, 450.0), n_frames=6, save_every=20, equilibration_steps=100,
                         progress=False)
    assert ds.R.shape == (6, 22, 3) and "REMD 300/450" in ds.theory
    e, f = openmm_energy_forces(ala_pdb, ds.R)
    np.testing.assert_allclose(ds.E, e, atol=1e-3)
    np.testing.assert_allclose(ds.F, f, atol=1e-3)
    assert 0.0 <= ds.extra["acceptance"][0] <= 1.0 and set(ds.extra["origin"].tolist()) <= {0, 1}
    hot = run_openmm_md(ala_pdb, n_frames=2, save_every=10, equilibration_steps=100, hot_start_K=600.0, replicas=2,
                        progress=False)
    assert hot.R.shape == (4, 22, 3) and hot.extra["replica"].tolist() == [0, 0, 1, 1]
    with pytest.raises(InputError, match="increasing"):
        run_openmm_remd(ala_pdb, temperatures=(400.0, 300.0), progress=False)


def test_hydrogen_mass_repartitioning_keeps_potential_and_total_mass(ala_pdb):
    """HMR moves mass from heavy atoms to their hydrogens (total unchanged) and leaves the potential alone: the
    frames of a 4 fs HMR + HBonds run carry exactly the forces of the plain system at those coordinates."""
    from forcefield.reference import openmm_energy_forces, run_openmm_md
    from forcefield.reference.openmm_md import build_system

    plain, _ = build_system(ala_pdb, "obc2", constraints="hbonds")
    hmr, mds = build_system(ala_pdb, "obc2", constraints="hbonds", hydrogen_mass=3.0)
    m0 = np.array([plain.getParticleMass(i)._value for i in range(plain.getNumParticles())])
    m1 = np.array([hmr.getParticleMass(i)._value for i in range(hmr.getNumParticles())])
    is_h = np.array([a.element.symbol == "H" for a in mds.topology.atoms()])
    assert m1.sum() == pytest.approx(m0.sum(), rel=1e-12)
    np.testing.assert_allclose(m1[is_h], 3.0, rtol=1e-12)
    assert (m1[~is_h] < m0[~is_h] + 1e-12).all() and (m1[~is_h] < m0[~is_h] - 1.0).any()
    ds = run_openmm_md(ala_pdb, n_frames=20, save_every=50, timestep_fs=4.0, solvent="obc2", constraints="hbonds",
                       hydrogen_mass=3.0, equilibration_steps=200, seed=3, progress=False)
    assert np.isfinite(ds.R).all() and float(ds.extra["hydrogen_mass"]) == 3.0
    e, f = openmm_energy_forces(ala_pdb, ds.R, solvent="obc2")  # the CPU platform's mixed precision: 1e-2
    np.testing.assert_allclose(ds.E, e, atol=1e-2)
    np.testing.assert_allclose(ds.F, f, atol=1e-2)
    with pytest.raises(InputError, match="hydrogen_mass"):
        build_system(ala_pdb, "vacuum", hydrogen_mass=0.5)


def test_md_replicas_on_dask_workers_equal_the_serial_run(ala_pdb):
    from forcefield.reference import run_openmm_md

    kw = dict(n_frames=3, save_every=20, equilibration_steps=50, replicas=2, seed=5, platform="Reference",
              progress=False)
    serial = run_openmm_md(ala_pdb, **kw)
    fanned = run_openmm_md(ala_pdb, client="local", n_workers=2, **kw)
    np.testing.assert_array_equal(serial.R, fanned.R)
    np.testing.assert_array_equal(serial.F, fanned.F)
    assert fanned.extra["replica"].tolist() == [0, 0, 0, 1, 1, 1]
    assert not np.allclose(serial.R[0], serial.R[3])  # the replicas are different runs
