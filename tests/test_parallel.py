"""Scale-out on Dask: work done on a 2-worker local cluster equals the same work done serially
(GFN2-xTB labels, Langevin replica groups, the kernel force field's σ grid)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from forcefield.errors import InputError
from forcefield.parallel import chunks, dask_client, get_client, map_blocks

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get this module's functions by value
    with dask_client("local", n_workers=2) as c:
        yield c
    assert c.status == "closed"


@pytest.fixture(scope="module")
def ethanol():
    from forcefield.dataset import Dataset

    d = np.load("tests/data/ethanol_xtb.npz", allow_pickle=False)
    return Dataset(R=d["R"], z=d["z"], E=d["E"], F=d["F"], name="ethanol")


def _replica_group(seed: int) -> np.ndarray:
    """Three Langevin replicas of a stiff 3D harmonic dimer from one seed: the positions (frames, 3, 2, 3)."""
    import torch

    from forcefield.langevin import simulate

    def force_fn(x):
        d = x[:, 1] - x[:, 0]
        r = d.norm(dim=-1, keepdim=True)
        f = -300.0 * (r - 1.5) * d / r  # k = 300 kcal/mol/Å², r0 = 1.5 Å
        return 150.0 * ((r - 1.5) ** 2).squeeze(-1), torch.stack([-f, f], dim=1)

    x0 = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], dtype=torch.float64).expand(3, 2, 3)
    traj = simulate(force_fn, x0, torch.tensor([12.0, 16.0], dtype=torch.float64), n_steps=200, save_every=20,
                    dt_fs=0.5, seed=seed, progress=False)
    return np.asarray(traj.R)


def test_replica_groups_on_workers_equal_serial(client):
    serial = map_blocks(_replica_group, [3, 4, 5], client=None, progress=False)
    dask = map_blocks(_replica_group, [3, 4, 5], client=client, progress=False)
    assert len(dask) == 3
    for a, b in zip(serial, dask):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    # the seeds matter (otherwise equality above would be empty), and the bond oscillates about 1.5 Å
    assert np.abs(serial[0] - serial[1]).max() > 1e-3
    r = np.linalg.norm(serial[0][:, :, 1] - serial[0][:, :, 0], axis=-1)
    assert abs(r.mean() - 1.5) < 0.05


def test_xtb_labelling_on_workers_equals_serial(client, ethanol):
    pytest.importorskip("tblite")
    from forcefield.reference import label_dataset

    ds = ethanol.subset(np.arange(0, 60, 6))  # 10 frames
    same_chunks = label_dataset(ds, progress=False, chunk_size=3)
    dask = label_dataset(ds, progress=False, client=client, chunk_size=3)
    np.testing.assert_array_equal(dask.E, same_chunks.E)  # same chunks: bit for bit
    np.testing.assert_array_equal(dask.F, same_chunks.F)
    # default chunks on workers against one serial pass: equal to the SCF tolerance (restart guesses differ)
    serial = label_dataset(ds, progress=False)
    auto = label_dataset(ds, progress=False, client=client)
    np.testing.assert_allclose(auto.E, serial.E, rtol=0, atol=1e-4)
    np.testing.assert_allclose(auto.F, serial.F, rtol=0, atol=2e-2)
    # and both are GFN2-xTB: the shipped labels of these frames agree to the same tolerance
    np.testing.assert_allclose(serial.F, ds.F, rtol=0, atol=2e-2)
    assert dask.theory == "GFN2-xTB" and len(dask) == 10


def test_kernel_sigma_grid_on_workers_equals_serial(client, ethanol):
    from forcefield.kernel import KernelForceField

    R, z, F, E = ethanol.R, ethanol.z, ethanol.F, ethanol.E
    tr, va = np.arange(0, 40, 2), np.arange(40, 60)
    kw = dict(sigma=[5.0, 20.0, 80.0], perms=None, solver="cholesky")
    a = KernelForceField(**kw).fit(R[tr], z, F[tr], E[tr], valid=(R[va], F[va]))
    b = KernelForceField(**kw).fit(R[tr], z, F[tr], E[tr], valid=(R[va], F[va]), client=client)
    assert b.info["sigma_scores"].keys() == a.info["sigma_scores"].keys()
    for s, mae in a.info["sigma_scores"].items():
        assert b.info["sigma_scores"][s] == pytest.approx(mae, rel=1e-9)
    assert b.sigma_ == a.sigma_
    assert len(set(a.info["sigma_scores"].values())) == 3  # σ changes the fit
    Ea, Fa = a.predict(R[va])
    Eb, Fb = b.predict(R[va])
    np.testing.assert_allclose(Fb, Fa, rtol=0, atol=1e-8)
    np.testing.assert_allclose(Eb, Ea, rtol=0, atol=1e-8)


def test_scheduler_address_connects_to_a_running_cluster(client):
    """A scheduler address (as for a cluster spanning machines) connects, runs, and leaves the cluster up."""
    address = client.scheduler.address
    assert address.startswith("tcp://")
    assert map_blocks(_replica_group, [7], client=address, progress=False)[0].shape == (10, 3, 2, 3)
    assert map_blocks(pow, [2, 3, 4], client=address, progress=False, common=3) == [8, 27, 64]
    with dask_client(address) as other:
        assert len(other.scheduler_info()["workers"]) == 2
    assert other.status == "closed" and client.status == "running"


def test_chunks_and_bad_input():
    assert [(s.start, s.stop) for s in chunks(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    assert map_blocks(abs, [-2, 3, -4], client=None, progress=False) == [2, 3, 4]
    assert map_blocks(pow, [2, 3, 4], client=None, progress=False, common=2) == [4, 9, 16]
    with pytest.raises(InputError):
        chunks(5, 0)
    with pytest.raises(InputError, match="address"):
        get_client("localhost:8786")
    with pytest.raises(InputError, match="client"):
        with dask_client(42):
            pass
