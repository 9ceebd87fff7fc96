"""Training loop of the backmapping VAE: train/validation split, Adam, checkpoint/resume, progress.

Checkpoints are plain ``torch.save`` dicts of tensors, numbers and strings, written atomically and read back
with ``torch.load(weights_only=True)``. A checkpoint holds the model, optimizer and scheduler state, the
epoch, the history and the split, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .losses import BackmapLoss


@dataclass
class TrainConfig:
    """Optimisation settings (all stored with checkpoints)."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    lr_min: float = 5e-5
    val_fraction: float = 0.1
    beta: float = 0.01
    ae_warmup: float = 0.3  # share of steps trained as a plain autoencoder (z = posterior mean, coordinate
    #                         loss only) ...
    ae_min_steps: int = 300  # ... but at least this many steps (at most half of all steps), so that the
    #                          decoder relies on the latent before noise and KL switch on (posterior collapse)
    beta_warmup: float = 0.2  # share of steps, after the autoencoder phase, over which beta and the
    #                           geometry weights ramp up from 0
    gamma_bond: float = 10.0
    gamma_angle: float = 5.0
    gamma_clash: float = 10.0
    gamma_prior: float = 0.2  # weight of the bonded/clash terms on decoded prior draws (relative to the above;
    #                           larger: more valid samples, less exact posterior reconstruction)
    clash_distance: float = 2.0
    seed: int = 0
    grad_clip: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``n`` frames (at least one validation frame when n > 1)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = 0 if n < 2 or val_fraction <= 0 else max(1, int(round(val_fraction * n)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise InputError(f"{path}: not a readable checkpoint ({e})") from e


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loss_fn: BackmapLoss, R: torch.Tensor, X: torch.Tensor, bs: int,
              beta: float) -> dict:
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for k in range(0, len(R), bs):
        r, x = R[k:k + bs], X[k:k + bs]
        out = model(r, x)
        out["mu_q"], out["lv_q"] = out["mu_q"], out["lv_q"]
        rec = model.decode(x, out["mu_q"])
        _, parts = loss_fn(out, r, beta)
        parts["rmsd_post"] = float(torch.sqrt(((rec - r) ** 2).sum(-1).mean(-1)).sum())
        for key, v in parts.items():
            sums[key] = sums.get(key, 0.0) + (v * len(r) if key != "rmsd_post" else v)
        n += len(r)
    return {k: v / n for k, v in sums.items()}


def train_model(model: torch.nn.Module, loss_fn: BackmapLoss, R: np.ndarray, X: np.ndarray,
                cfg: TrainConfig, device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None,
                resume: bool = True, progress: bool = True, extra: dict | None = None,
                checkpoint_every: int = 1) -> History:
    """Fit ``model`` to atoms R (M, N, 3) and beads X (M, n, 3) (Å).

    Parameters
    ----------
    cfg : optimisation settings.
    device : torch device for training; the model is left there.
    checkpoint : file written every ``checkpoint_every`` epochs (atomically) and at the end; with
        ``resume=True`` an existing file is loaded first and training goes on from its epoch.
    extra : JSON-able dict stored in the checkpoint (e.g. the mapping and model config).

    Returns
    -------
    History of per-epoch mean training losses and validation losses (``rmsd_post``: RMSD of the decoded
    posterior mean, Å, without alignment).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.to(device)
    loss_fn.to(device)
    tr, va = split_indices(len(R), cfg.val_fraction, cfg.seed)
    Rt = torch.as_tensor(R, dtype=torch.float32)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(s, total) / total))) / cfg.lr)
    n_ae = min(max(int(cfg.ae_warmup * total), cfg.ae_min_steps), total // 2)
    hist = History()
    start = 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start = int(ck["epoch"])
        h = json.loads(ck["history"])
        hist = History(h["train"], h["val"])
        tr, va = ck["train_idx"].numpy(), ck["val_idx"].numpy()
    gen = torch.Generator().manual_seed(cfg.seed + start)
    torch.manual_seed(cfg.seed + 1000 + start)
    bar = tqdm(range(start, cfg.epochs), desc="backmap train", disable=not progress, mininterval=1.0)
    for epoch in bar:
        model.train()
        perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
        sums: dict[str, float] = {}
        for k in range(0, len(perm), cfg.batch_size):
            idx = perm[k:k + cfg.batch_size]
            step = epoch * steps_per_epoch + k // cfg.batch_size
            ae = step < n_ae
            ramp = 0.0 if ae else min(1.0, (step + 1 - n_ae) / max(1.0, cfg.beta_warmup * total))
            beta = cfg.beta * ramp
            r, x = Rt[idx].to(device), Xt[idx].to(device)
            out = model(r, x, deterministic=ae, prior_sample=not ae and loss_fn.gamma_prior > 0)
            # the bonded and clash terms wait for the autoencoder phase: from the start they would hold the
            # hydrogens at an average placement (they are blind to rotations about bonds) and stall training
            loss, parts = loss_fn(out, r, beta, ramp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v * len(idx)
        rec = {k: v / len(tr) for k, v in sums.items()}
        rec["epoch"], rec["beta"] = epoch + 1, beta
        hist.train.append(rec)
        if len(va):
            vrec = _evaluate(model, loss_fn, Rt[va].to(device), Xt[va].to(device), 4 * cfg.batch_size, beta)
            vrec["epoch"] = epoch + 1
            hist.val.append(vrec)
            bar.set_postfix(coord=f"{rec['coord']:.4f}", kl=f"{rec['kl']:.2f}", val_rmsd=f"{vrec['rmsd_post']:.3f}")
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            save_checkpoint(checkpoint, {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1,
                "history": json.dumps(asdict(hist)), "train_idx": torch.as_tensor(tr), "val_idx": torch.as_tensor(va),
                "train_config": json.dumps(cfg.to_dict()), "extra": json.dumps(extra or {}),
            })
    model.eval()
    return hist
