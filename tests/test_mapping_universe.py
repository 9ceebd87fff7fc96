"""cg.map_universe / write_mapped: in-memory bead Universes, streaming, force providers, file round trips."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cg
from cg.universe import iter_mapped, map_universe, write_mapped
from forcefield.errors import InputError
from forcefield.units import KJ_PER_KCAL


@pytest.fixture(scope="module")
def ala_universe(ala_md, ala_pdb):
    return ala_md.to_universe(str(ala_pdb))  # positions Å, forces kJ/(mol Å)


@pytest.fixture(scope="module")
def bb_map(ala_universe):
    return cg.Mapping.from_preset(ala_universe.atoms, "backbone")


def test_map_universe_positions_forces_topology(ala_universe, bb_map, ala_md):
    cgu = map_universe(ala_universe, bb_map, chunk=37)
    assert cgu.atoms.n_atoms == 6 and len(cgu.trajectory) == len(ala_md)
    assert list(cgu.atoms.names) == ["C", "N", "CA", "C", "N", "C"]
    assert list(cgu.atoms.resnames) == ["ACE", "ALA", "ALA", "ALA", "NME", "NME"]
    assert np.allclose(cgu.atoms.masses, bb_map.masses)
    assert sorted(map(tuple, cgu.bonds.indices.tolist())) == [tuple(b) for b in bb_map.bonds.tolist()]
    assert np.allclose(cgu.trajectory.coordinate_array, bb_map.map_positions(ala_md.R), atol=1e-4)
    for k in (0, 57, 199):
        cgu.trajectory[k]
        # MDAnalysis units inside the universe: kJ/(mol Å)
        assert np.allclose(cgu.atoms.forces, bb_map.map_forces(ala_md.F[k]) * KJ_PER_KCAL, rtol=1e-5, atol=1e-3)
    # Newton's third law survives the map: the total force equals the total atomic force
    assert np.allclose(cgu.atoms.forces.sum(0), ala_md.F[199].sum(0) * KJ_PER_KCAL, atol=1e-2)


def test_streaming_chunks_agree(ala_universe, bb_map):
    full = map_universe(ala_universe, bb_map, chunk=1000).trajectory.coordinate_array
    parts = [c["positions"] for c in iter_mapped(ala_universe, bb_map, start=10, stop=150, step=3, chunk=7)]
    assert sum(len(p) for p in parts) == len(range(10, 150, 3))
    assert np.allclose(np.concatenate(parts), full[10:150:3], atol=1e-4)


def test_round_trip_pdb_trr_xtc(ala_universe, bb_map, tmp_path):
    import MDAnalysis as mda

    from forcefield.universe import write_universe

    cgu = map_universe(ala_universe, bb_map)
    X = cgu.trajectory.coordinate_array.copy()
    Fk = np.stack([ts.forces.copy() for ts in cgu.trajectory])
    write_universe(cgu, tmp_path / "cg.trr")
    write_mapped(ala_universe, bb_map, tmp_path / "stream.xtc", chunk=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = mda.Universe(str(tmp_path / "cg.pdb"), str(tmp_path / "cg.trr"))
        assert list(back.atoms.names) == list(cgu.atoms.names) and len(back.bonds) == len(bb_map.bonds)
        assert np.allclose(np.stack([ts.positions.copy() for ts in back.trajectory]), X, atol=1e-4)
        assert np.allclose(np.stack([ts.forces.copy() for ts in back.trajectory]), Fk, rtol=1e-5, atol=1e-3)
        xtc = mda.Universe(str(tmp_path / "stream.pdb"), str(tmp_path / "stream.xtc"))
        assert len(xtc.trajectory) == len(X)
        assert np.allclose(xtc.trajectory.timeseries(order="fac"), X, atol=2e-3)  # xtc precision 0.001 nm


def test_force_provider_when_trajectory_lacks_forces(ala_md, ala_pdb, bb_map):
    u = ala_md.subset(slice(0, 20))
    u.F = None
    u = u.to_universe(str(ala_pdb))
    assert not u.trajectory.ts.has_forces
    assert map_universe(u, bb_map).trajectory.ts.has_forces is False
    R0 = ala_md.R[0]

    class Spring:  # any object with .predict(R) -> (E, F) in kcal/mol/Å
        def predict(self, R):
            return None, -3.0 * (R - R0)

    cgu = map_universe(u, bb_map, forces=Spring(), chunk=6)
    want = bb_map.map_forces(-3.0 * (ala_md.R[:20] - R0)) * KJ_PER_KCAL
    assert np.allclose(np.stack([ts.forces.copy() for ts in cgu.trajectory]), want, rtol=1e-5, atol=1e-3)


def test_mismatched_universe_is_rejected(ala_universe):
    m = cg.Mapping.from_indices([[0, 1], [2]], np.ones(3))
    with pytest.raises(InputError, match="the mapping covers 3 atoms but the universe/group has 22"):
        map_universe(ala_universe, m)
