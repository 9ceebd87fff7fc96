"""Active learning of the kernel force field with a cheap analytic reference (Morse bonds + harmonic angles on
ethanol): a round adds frames and lowers the error on the model's own MD; an interrupted run resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import KernelForceField, load_dataset
from forcefield.dataset import Dataset
from forcefield.elements import masses
from forcefield.geometry import covalent_bonds
from forcefield.kernel.active import (ActiveConfig, ActiveResult, active_learn, farthest_points, plot_rounds,
                                      select_frames)
from forcefield.langevin import simulate

DATA = Path(__file__).parent / "data"


class MorseAngles:
    """Analytic reference: Morse bonds and harmonic angles around a reference geometry (kcal/mol, Å)."""

    def __init__(self, R0: np.ndarray, z: np.ndarray) -> None:
        self.z = z
        b = covalent_bonds(R0, z)
        self.b = torch.as_tensor(b)
        self.r0 = torch.as_tensor(np.linalg.norm(R0[b[:, 0]] - R0[b[:, 1]], axis=1))
        ang = [(i, c, k) for c in range(len(z)) for i in range(len(z)) for k in range(i + 1, len(z))
               if {(min(i, c), max(i, c)), (min(k, c), max(k, c))} <= {tuple(sorted(e)) for e in b.tolist()}]
        self.a = torch.as_tensor(np.array(ang))
        self.t0 = self._angles(torch.as_tensor(R0)[None])[0]
        self.calls = 0

    def _angles(self, R):
        u = R[:, self.a[:, 0]] - R[:, self.a[:, 1]]
        v = R[:, self.a[:, 2]] - R[:, self.a[:, 1]]
        return torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)))

    def energy_forces(self, R: torch.Tensor):
        R = R.detach().clone().requires_grad_(True)
        r = (R[:, self.b[:, 0]] - R[:, self.b[:, 1]]).norm(dim=-1)
        E = (80.0 * (1 - torch.exp(-2.0 * (r - self.r0))) ** 2).sum(1)
        E = E + (40.0 * (self._angles(R) - self.t0) ** 2).sum(1)
        (g,) = torch.autograd.grad(E.sum(), R)
        return E.detach(), -g

    def __call__(self, ds: Dataset) -> Dataset:
        self.calls += 1
        E, F = self.energy_forces(torch.as_tensor(ds.R, dtype=torch.float64))
        return Dataset(R=ds.R, z=ds.z, E=E.numpy(), F=F.numpy(), name="analytic")


@pytest.fixture(scope="module")
def system():
    eth = load_dataset(DATA / "ethanol_xtb.npz")
    ref = MorseAngles(eth.R[0], eth.z)
    traj = simulate(ref.energy_forces, torch.as_tensor(eth.R[0]), torch.as_tensor(masses(eth.z)), n_steps=1200,
                    save_every=20, dt_fs=0.5, temperature=300.0, seed=1, progress=False)
    R = traj.R[:, 0]
    ds = ref(Dataset(R=R, z=eth.z))
    train, test = ds[np.arange(0, 40, 4)], ds[np.arange(40, 60, 2)]  # 10 training frames, 10 held out
    ff = KernelForceField(sigma=10, solver="cholesky").fit(train.R, train.z, F=train.F, E=train.E)
    return ref, train, test, ff


CFG = dict(max_rounds=1, replicas=4, md_steps=300, save_every=10, timestep_fs=0.5, frames_per_round=8,
           spot_checks=10, target_ratio=1.0001, seed=0)


def test_round_adds_frames_and_lowers_own_md_error(system, tmp_path):
    ref, train, test, ff = system
    res = active_learn(ff, train, test, starts=train.R, label_fn=ref, config=CFG, workdir=tmp_path)
    r0, r1 = res.log
    assert r0["frames_added"] == 18 and len(res.train) == len(train) + 18  # 8 picked + 10 spot-check frames
    assert r1["frames_added"] == 0  # the last round only checks
    # the refitted model is better on its own MD (new random frames) than the first model was on its own
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["next_round"] == 2 and state["rounds"] == res.log
    assert np.load(tmp_path / state["files"]["starts"])["R"].shape == (4, len(train.z), 3)
    assert r1["spot_mae"] < r0["spot_mae"]
    # ... and the result saves and loads
    back = ActiveResult.load(tmp_path)
    assert back.log == res.log and len(back.train) == len(res.train)
    assert np.allclose(back.model.predict(test.R)[1], res.model.predict(test.R)[1])
    assert (tmp_path / "active_log.csv").read_text().count("\n") == 3
    assert plot_rounds(res.log, tmp_path / "rounds.png").stat().st_size > 0


def test_interrupted_run_resumes_after_the_last_round(system, tmp_path):
    ref, train, test, ff = system

    class Crash(RuntimeError):
        pass

    def flaky(ds):  # round 0 labels twice (spot check, new frames); crash on round 1's spot check
        if flaky.n == 2:
            flaky.n += 1
            raise Crash
        flaky.n += 1
        return ref(ds)

    flaky.n = 0
    cfg = dict(CFG, max_rounds=2)
    with pytest.raises(Crash):
        active_learn(ff, train, test, starts=train.R, label_fn=flaky, config=cfg, workdir=tmp_path)
    first = json.loads((tmp_path / "state.json").read_text())
    assert first["next_round"] == 1 and len(first["rounds"]) == 1
    calls = ref.calls
    res = active_learn(ff, train, test, starts=train.R, label_fn=ref, config=cfg, workdir=tmp_path)
    assert [r["round"] for r in res.log] == [0, 1, 2]
    assert res.log[0] == first["rounds"][0]  # not recomputed
    assert ref.calls - calls == 3  # round 1: spot check + new frames; round 2: spot check only
    assert len(res.train) == len(train) + 36


def test_selection_is_spread_out(system):
    _, train, _, ff = system
    # a cluster of near-copies of one frame with the largest std, and distinct frames with lower std
    R = np.concatenate([train.R[0] + 1e-3 * np.random.default_rng(0).normal(size=(6, 9, 3)), train.R[1:]])
    std = np.concatenate([np.full((6, 9), 5.0), np.full((len(train) - 1, 9), 1.0)])
    pick = select_frames(ff, R, std, k=3, candidate_factor=4)
    assert pick[0] == 0 and np.sum(pick < 6) == 1
    X = torch.eye(4, dtype=torch.float64)
    assert sorted(farthest_points(X, 4)) == [0, 1, 2, 3]


def test_config_is_strict():
    with pytest.raises(Exception):
        ActiveConfig(max_round=3)


def test_cli_learn_with_xtb(tmp_path):
    """``cgwb kernel learn`` end to end on ethanol with GFN2-xTB labels (one labelling round, a few frames)."""
    from cgwb.cli import main

    eth = load_dataset(DATA / "ethanol_xtb.npz")
    tr, te = tmp_path / "tr.npz", tmp_path / "te.npz"
    eth[np.arange(0, 30, 3)].save(tr)
    eth[np.arange(40, 60, 4)].save(te)
    m = tmp_path / "m.npz"
    assert main(["kernel", "train", str(tr), "-n", "10", "--sigma", "10", "-o", str(m), "-q", "--device", "cpu"]) == 0
    out = tmp_path / "learn"
    assert main(["kernel", "learn", str(m), str(tr), str(te), "-o", str(out), "--rounds", "1", "-B", "2",
                 "--steps", "60", "--save-every", "10", "--dt", "0.5", "--frames", "2", "--spot-checks", "3",
                 "--target-ratio", "0.01", "-q", "--device", "cpu"]) == 0
    res = ActiveResult.load(out)
    assert [r["round"] for r in res.log] == [0, 1] and len(res.train) == 10 + 5
    assert (out / "active_rounds.png").exists()


def test_round_with_replica_exchange_ladders(system, tmp_path):
    """Active learning that explores with the reference's sampler (two-temperature ladders, repartitioned
    hydrogen masses) still lowers the error on its own MD; a replica count that fills no ladder is refused."""
    from forcefield.errors import InputError

    ref, train, test, ff = system
    cfg = dict(CFG, temperatures=2, max_temperature=400.0, exchange_every=10, hydrogen_mass=2.0)
    res = active_learn(ff, train, test, starts=train.R[:4], label_fn=ref, config=cfg, workdir=tmp_path)
    r0, r1 = res.log
    assert r0["frames_added"] == 18 and r1["spot_mae"] < r0["spot_mae"]
    with pytest.raises(InputError, match="multiple of temperatures"):
        active_learn(ff, train, test, starts=train.R[:3], label_fn=ref, config=dict(cfg, replicas=3),
                     workdir=tmp_path / "bad")


def test_worst_case_check_keeps_learning_when_random_spot_checks_pass(system, tmp_path):
    """With a lenient spot-check target, random spot checks call round 0 converged; the labelled most
    uncertain frames are worse than the held-out error, so the worst-case check goes on and adds them."""
    ref, train, test, ff = system
    lenient = dict(CFG, target_ratio=100.0, md_steps=40, save_every=4)  # short runs: no replica blows up
    plain = active_learn(ff, train, test, starts=train.R, label_fn=ref, config=lenient, workdir=tmp_path / "a")
    assert plain.converged and plain.log[0]["frames_added"] == 0 and "picked_mae" not in plain.log[0]
    strict = active_learn(ff, train, test, starts=train.R, label_fn=ref, workdir=tmp_path / "b",
                          config=dict(lenient, uncertain_ratio=1.0))
    r0 = strict.log[0]
    assert r0["picked_ratio"] > 1.0 and r0["frames_added"] == 18
    assert strict.log[1]["picked_mae"] < r0["picked_mae"]  # the refit model is better where it was least sure
