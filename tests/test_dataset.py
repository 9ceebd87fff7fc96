"""sGDML-format datasets: round trips, sgdml's md5, MDAnalysis conversion, clear errors."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from forcefield import Dataset, InputError, load_dataset


def _toy(rng, m=5, n=4, z_dtype=np.uint8):
    return Dataset(R=rng.normal(size=(m, n, 3)), z=np.array([6, 1, 1, 8], dtype=z_dtype)[:n],
                   E=rng.normal(size=m), F=rng.normal(size=(m, n, 3)), name="toy", theory="made up")


def _sgdml_reference_md5(dataset: dict) -> str:
    """sgdml 1.0.3 ``utils.io.dataset_md5`` restated: md5 over md5 digests of z, R, (E), F."""
    h = hashlib.md5()
    keys = ["z", "R"] + (["E"] if "E" in dataset else []) + ["F"]
    for k in keys:
        h.update(hashlib.md5(dataset[k].ravel()).digest())
    return h.hexdigest()


@pytest.mark.parametrize("z_dtype", [np.uint8, np.int64])
def test_npz_round_trip_is_bit_exact(tmp_path, rng, z_dtype):
    ds = _toy(rng, z_dtype=z_dtype)
    ds.extra["perms"] = np.array([[0, 1, 2, 3], [0, 2, 1, 3]])
    p = ds.save(tmp_path / "toy.npz")
    back = load_dataset(p)
    for k in ("R", "z", "E", "F"):
        a, b = getattr(ds, k), getattr(back, k)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert back.name == "toy" and back.theory == "made up"
    assert np.array_equal(back.extra["perms"], ds.extra["perms"])
    with np.load(p, allow_pickle=False) as f:
        assert set(f.files) >= {"R", "z", "E", "F", "name", "theory", "type", "md5", "r_unit", "e_unit"}
        assert f["md5"].item().decode() == _sgdml_reference_md5({k: f[k] for k in ("z", "R", "E", "F")})
        assert str(f["type"]) == "d"


def test_md5_matches_sgdml_definition(rng):
    ds = _toy(rng)
    assert ds.md5() == _sgdml_reference_md5({"z": ds.z, "R": ds.R, "E": ds.E, "F": ds.F})
    no_e = Dataset(R=ds.R, z=ds.z, F=ds.F)
    assert no_e.md5() == _sgdml_reference_md5({"z": ds.z, "R": ds.R, "F": ds.F})
    # a fixed input has a fixed fingerprint (guards against silent changes in the byte layout)
    fixed = Dataset(R=np.arange(6, dtype=float).reshape(1, 2, 3), z=np.array([1, 1]), E=np.zeros(1),
                    F=np.ones((1, 2, 3)))
    assert fixed.md5() == _sgdml_reference_md5({"z": fixed.z, "R": fixed.R, "E": fixed.E, "F": fixed.F})
    try:
        from sgdml.utils.io import dataset_md5
    except Exception:  # sgdml is optional (it breaks on NumPy >= 2.4)
        return
    assert dataset_md5({"z": ds.z, "R": ds.R, "E": ds.E, "F": ds.F}).decode() == ds.md5()


def test_loading_never_unpickles(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, R=np.zeros((1, 1, 3)), z=np.array([1]), F=np.zeros((1, 1, 3)), name=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickle"):
        load_dataset(p)


def test_subset_and_concatenate(rng):
    ds = _toy(rng, m=6)
    a, b = ds[:2], ds[2:]
    both = Dataset.concatenate([a, b])
    assert np.array_equal(both.R, ds.R) and np.array_equal(both.F, ds.F) and np.array_equal(both.E, ds.E)
    assert len(ds[np.array([0, 3])]) == 2


def test_universe_round_trip_keeps_positions_and_forces(rng):
    ds = _toy(rng)
    ds.R = ds.R.astype(np.float32).astype(np.float64)  # MDAnalysis stores float32
    u = ds.to_universe()
    back = Dataset.from_universe(u)
    assert np.array_equal(back.z.astype(int), ds.z.astype(int))
    np.testing.assert_allclose(back.R, ds.R, atol=1e-6)
    np.testing.assert_allclose(back.F, ds.F, rtol=1e-6, atol=1e-6)


def test_mdanalysis_trr_with_forces_converts():
    mda = pytest.importorskip("MDAnalysis")
    from MDAnalysisTests.datafiles import PDB_xvf, TRR_xvf

    u = mda.Universe(PDB_xvf, TRR_xvf)
    ds = Dataset.from_universe(u, selection="protein")
    prot = u.select_atoms("protein")
    assert ds.R.shape == (len(u.trajectory), prot.n_atoms, 3)
    u.trajectory[1]
    np.testing.assert_allclose(ds.R[1], prot.positions, atol=1e-5)
    # MDAnalysis reports kJ/(mol Å); the dataset holds kcal/mol/Å
    np.testing.assert_allclose(ds.F[1], prot.forces / 4.184, rtol=1e-5, atol=1e-5)
    assert np.abs(ds.F).max() > 1.0
    assert set(ds.symbols) >= {"C", "H", "N", "O", "S"}
    from_group = Dataset.from_universe(prot)  # an AtomGroup works too
    np.testing.assert_array_equal(from_group.R, ds.R)


def test_write_trajectory_round_trip(tmp_path, rng):
    from forcefield.universe import open_universe, write_universe

    ds = _toy(rng, m=3)
    u = ds.to_universe()
    write_universe(u, tmp_path / "t.trr")
    back = open_universe(tmp_path / "t.pdb", tmp_path / "t.trr")
    got = Dataset.from_universe(back)
    np.testing.assert_allclose(got.R, ds.R, atol=1e-3)
    np.testing.assert_allclose(got.F, ds.F, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad input
def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match="nope.npz: no such file"):
        load_dataset(tmp_path / "nope.npz")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="bad.npz: not a readable"):
        load_dataset(p)


def test_wrong_shapes(rng, tmp_path):
    with pytest.raises(InputError, match=r"R must have shape \(M, 3, 3\)"):
        Dataset(R=rng.normal(size=(2, 4, 3)), z=np.array([1, 1, 8]))
    with pytest.raises(InputError, match="F must have the shape of R"):
        Dataset(R=rng.normal(size=(2, 3, 3)), z=np.array([1, 1, 8]), F=np.zeros((2, 3, 2)))
    with pytest.raises(InputError, match="one energy per frame"):
        Dataset(R=rng.normal(size=(2, 3, 3)), z=np.array([1, 1, 8]), E=np.zeros(3))
    p = tmp_path / "shape.npz"
    np.savez(p, R=rng.normal(size=(2, 4, 3)), z=np.array([1, 1, 8]))
    with pytest.raises(InputError, match="shape.npz: R must have shape"):
        load_dataset(p)


def test_nan_coordinates_and_forces_name_frame_and_atom(rng):
    R = rng.normal(size=(3, 3, 3))
    R[2, 1, 0] = np.nan
    with pytest.raises(InputError, match=r"coordinates R contain NaN.*frame 2, atom 1"):
        Dataset(R=R, z=np.array([1, 1, 8]), source="x.npz")
    F = np.zeros((3, 3, 3))
    F[1, 0, 2] = np.inf
    with pytest.raises(InputError, match=r"x.npz: forces F contain NaN.*frame 1, atom 0"):
        Dataset(R=np.zeros((3, 3, 3)), z=np.array([1, 1, 8]), F=F, source="x.npz")


def test_unknown_element(rng):
    with pytest.raises(InputError, match="unknown element: atom 1 has atomic number 0"):
        Dataset(R=np.zeros((1, 2, 3)), z=np.array([1, 0]))
    from forcefield.elements import atomic_number

    with pytest.raises(InputError, match="unknown element 'Qq'"):
        atomic_number("Qq")


def test_topology_trajectory_atom_mismatch(tmp_path, ala_pdb):
    from MDAnalysisTests.datafiles import TRR_xvf

    from forcefield import open_universe

    with pytest.raises(InputError, match="atom count does not match topology"):
        open_universe(ala_pdb, TRR_xvf)
    with pytest.raises(InputError, match="missing.xtc: no such file"):
        open_universe(ala_pdb, tmp_path / "missing.xtc")


def test_stored_md5_mismatch_is_reported(tmp_path, rng):
    ds = _toy(rng)
    arrays = ds.to_arrays()
    arrays["F"] = arrays["F"] + 1.0
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(InputError, match="tampered.npz: stored md5"):
        load_dataset(tmp_path / "tampered.npz")
