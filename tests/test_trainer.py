"""The shared Lightning trainer (cg.trainer): data order, exact resume, early stopping, safe checkpoints,
contiguous validation blocks per replica, quiet runs with CSV logs, and 2-process DDP = 1 process."""
from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cg.potential import CGPotential, build_potential
from cg.train import train_force_matching
from cg.trainer import EpochBatchSampler, load_checkpoint
from forcefield.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _chain_problem(M=240, n=5, seed=0, noise=1.0):
    """Frames of a bead chain with harmonic bonds (k 20 kcal/mol/Å², r0 1.5 Å); forces exact plus noise."""
    rng = np.random.default_rng(seed)
    X = np.cumsum(rng.normal(size=(M, n, 3)) * 0.3 + np.array([1.5, 0, 0]), axis=1)
    d = X[:, 1:] - X[:, :-1]
    r = np.linalg.norm(d, axis=-1, keepdims=True)
    f = -20.0 * (r - 1.5) * d / r
    F = np.zeros_like(X)
    F[:, 1:] += f
    F[:, :-1] -= f
    return X.astype(np.float32), (F + rng.normal(0, noise, F.shape)).astype(np.float32)


def _pot(n=5, seed=0):
    torch.manual_seed(seed)
    bonds = np.array([[i, i + 1] for i in range(n - 1)])
    return build_potential(None, list("ABABA")[:n], np.full(n, 12.0), bonds, hidden=16, n_rbf=8, n_interactions=1)


def _net(pot):
    return {k: v.detach().clone() for k, v in pot.net.state_dict().items()}


def test_epoch_order_is_seeded_by_epoch_and_shared_over_ranks(monkeypatch):
    import cg.batches as B

    s = EpochBatchSampler(np.arange(10, 33), batch_size=5, shuffle=True, seed=3)
    orders = []
    for e in range(3):
        s.set_epoch(e)
        o = np.concatenate([b.numpy() for b in s])
        assert sorted(o.tolist()) == list(range(10, 33))  # every training frame once per epoch
        orders.append(o)
    assert not np.array_equal(orders[0], orders[1])
    s2 = EpochBatchSampler(np.arange(10, 33), 5, True, seed=3)
    s2.offset = 1  # a resumed run (one epoch done) whose Lightning epoch restarts at 0
    s2.set_epoch(0)
    assert np.array_equal(np.concatenate([b.numpy() for b in s2]), orders[1])
    # two data-parallel ranks: the same number of steps, each global batch shared out without overlap
    s.set_epoch(1)
    glob = s.global_batches()
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(B, "_rank_world", lambda r=rank: (r, 2))
        parts.append([b.numpy() for b in s])
        assert len(s) == len(glob)
    for g, a, b in zip(glob, *parts):
        assert sorted(np.r_[a, b].tolist()) == sorted(g.tolist()) and abs(len(a) - len(b)) <= 1


def test_force_matching_resumed_equals_uninterrupted(tmp_path):
    """2 epochs, stop, resume to 5 == 5 epochs at once: same weights (best and last), lr and history."""
    X, F = _chain_problem()
    kw = dict(batch_size=32, lr=3e-3, lr_patience=0, patience=50, progress=False, seed=1)
    pa = _pot()
    ra = train_force_matching(pa, X, F, epochs=5, checkpoint=tmp_path / "a.ckpt", **kw)
    pb = _pot()
    rb1 = train_force_matching(pb, X, F, epochs=2, checkpoint=tmp_path / "b.ckpt", **kw)
    assert len(rb1.val_rmse) == 2
    pb = _pot(seed=7)  # a fresh process would not have the same initial weights: the checkpoint must
    rb = train_force_matching(pb, X, F, epochs=5, checkpoint=tmp_path / "b.ckpt", resume=True, **kw)
    assert rb.val_rmse == pytest.approx(ra.val_rmse, rel=1e-6, abs=0) and rb.lr == ra.lr
    assert rb.best_epoch == ra.best_epoch and rb.val_rmse[:2] == rb1.val_rmse
    assert ra.val_rmse[-1] < ra.prior_val_rmse  # it learned something
    for k, v in _net(pa).items():
        torch.testing.assert_close(_net(pb)[k], v, rtol=1e-6, atol=1e-7)
    ca, cb = load_checkpoint(tmp_path / "a.ckpt"), load_checkpoint(tmp_path / "b.ckpt")
    assert ca["epochs_done"] == cb["epochs_done"] == 5
    for k, v in ca["module"].items():  # last-epoch weights and optimiser moments
        torch.testing.assert_close(cb["module"][k], v, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cb["optimizer"]["state"][0]["exp_avg_sq"], ca["optimizer"]["state"][0]["exp_avg_sq"])
    # the checkpoint also loads as a potential: its best network
    back = CGPotential.load(tmp_path / "b.ckpt")
    x = torch.tensor(X[:4])
    torch.testing.assert_close(back.energy_forces(x)[1], pb.energy_forces(x)[1], rtol=1e-5, atol=1e-5)


def test_backmap_resumed_equals_uninterrupted(ala_md, tmp_path, monkeypatch):
    """The VAE (noise, β ramp, cosine lr per step) interrupted after 2 of 3 epochs ends where one run ends."""
    import backmap.api as api
    from backmap import Backmapper
    from backmap.train import train_model
    from cg import Mapping
    from forcefield.elements import masses

    data = ala_md.subset(np.arange(72))
    mp = Mapping.from_indices([[0, 1, 2, 3, 4, 5], list(range(6, 16)), list(range(16, 22))], masses(ala_md.z),
                              weighting="cog")
    kw = dict(hidden=8, latent=2, layers=1, enc_layers=1, epochs=3, batch_size=16, ae_min_steps=4)
    a = Backmapper(mp, **kw).fit(data, checkpoint=tmp_path / "a.pt", progress=False)
    monkeypatch.setattr(api, "train_model", functools.partial(train_model, stop_after=2))
    b1 = Backmapper(mp, **kw).fit(data, checkpoint=tmp_path / "b.pt", progress=False)
    assert len(b1.history.train) == 2
    monkeypatch.setattr(api, "train_model", train_model)
    b = Backmapper(mp, **kw).fit(data, checkpoint=tmp_path / "b.pt", progress=False)
    assert [h["kl"] for h in b.history.train] == pytest.approx([h["kl"] for h in a.history.train], rel=1e-5)
    assert a.history.train[-1]["beta"] > 0  # the noisy VAE phase was reached before the end
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    ck = load_checkpoint(tmp_path / "b.pt")
    n = len(data.R)
    assert ck["val_idx"].tolist() == list(range(n - round(0.1 * n), n))  # the last block validates


def test_early_stopping_and_safe_checkpoints(tmp_path):
    """With lr 0 nothing improves after epoch 1: training stops after `patience` more epochs, stays
    stopped on resume, and the checkpoint is plain data (weights_only); pickles are refused."""
    X, F = _chain_problem(M=80)
    pot = _pot()
    w0 = _net(pot)
    ck = tmp_path / "fm.ckpt"
    res = train_force_matching(pot, X, F, epochs=20, lr=0.0, patience=3, checkpoint=ck, progress=False)
    assert res.stopped_early and len(res.val_rmse) == 1 + 3 and res.best_epoch == 0
    for k, v in w0.items():
        torch.testing.assert_close(_net(pot)[k], v)
    s = torch.load(ck, map_location="cpu", weights_only=True)
    assert s["stopped_early"] and s["early_stopping"]["wait_count"] == 3 and s["epoch"] == 3
    res2 = train_force_matching(pot, X, F, epochs=30, lr=0.0, patience=3, checkpoint=ck, progress=False)
    assert len(res2.val_rmse) == 4 and res2.val_rmse == res.val_rmse
    with pytest.raises(InputError, match="other data"):
        train_force_matching(pot, X[:60], F[:60], epochs=5, checkpoint=ck, progress=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.ckpt"
    torch.save({"format": "cgworkbench-train-checkpoint", "x": Evil()}, bad)
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def test_validation_is_the_last_block_of_each_replica():
    """The prior-only RMSE is over exactly the last 10 % of each replica (no network, no priors: F itself)."""
    X, F = _chain_problem(M=100)
    lengths = [30, 50, 20]
    val = np.r_[27:30, 75:80, 98:100]
    res = train_force_matching(_pot(), X, F, epochs=1, lengths=lengths, progress=False)
    assert (res.n_train, res.n_val) == (90, 10)
    assert res.prior_val_rmse == pytest.approx(float(np.sqrt((F[val].astype(float) ** 2).mean())), rel=1e-9)
    with pytest.raises(InputError, match="add up to 90"):
        train_force_matching(_pot(), X, F, epochs=1, lengths=[40, 50], progress=False)


def test_quiet_run_and_csv_log(tmp_path, capfd):
    """progress=False prints nothing; the CSV log has one row per epoch, also across a resume."""
    X, F = _chain_problem(M=60)
    kw = dict(progress=False, log_dir=tmp_path / "log", checkpoint=tmp_path / "ck")
    train_force_matching(_pot(), X, F, epochs=2, **kw)
    res = train_force_matching(_pot(), X, F, epochs=3, **kw)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no progress bar, no Lightning banner or advice
    with open(tmp_path / "log" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]
    assert [float(r["val_rmse"]) for r in rows] == pytest.approx(res.val_rmse, rel=1e-9)


DDP_SCRIPT = """
import json, sys
import numpy as np, torch
import torch.distributed as dist
from cg.potential import CGPotential
from cg.train import train_force_matching

d = np.load(sys.argv[1], allow_pickle=False)
pot = CGPotential.load(sys.argv[2])
res = train_force_matching(pot, d["X"], d["F"], **json.loads(sys.argv[3]))
if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
    with open(sys.argv[4], "w") as fh:
        json.dump({"val_rmse": res.val_rmse, "prior": res.prior_val_rmse, "n_train": res.n_train}, fh)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_process_ddp_matches_one_process(tmp_path):
    """Force matching with devices=2, strategy="ddp" (gloo, CPU; two processes started by Lightning from a
    script) reaches the validation RMSE of the one-process run within 5 %."""
    X, F = _chain_problem(M=240)
    pot = _pot()
    pot.save(str(tmp_path / "init.pt"))
    np.savez(tmp_path / "data.npz", X=X, F=F)
    kw = dict(epochs=4, batch_size=16, lr=2e-2, seed=0, progress=False)
    one = train_force_matching(CGPotential.load(str(tmp_path / "init.pt")), X, F, **kw)
    script = tmp_path / "ddp_fm.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    kw2 = {**kw, "devices": 2, "accelerator": "cpu", "strategy": "ddp"}
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "data.npz"), str(tmp_path / "init.pt"),
                        json.dumps(kw2), str(tmp_path / "out.json")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    assert two["n_train"] == one.n_train and two["prior"] == pytest.approx(one.prior_val_rmse, rel=1e-6)
    assert one.val_rmse[-1] < 0.7 * one.prior_val_rmse  # both runs learn...
    assert two["val_rmse"][-1] == pytest.approx(one.val_rmse[-1], rel=0.05)  # ...to the same validation loss
