"""Training of the backmapping VAE on the shared Lightning trainer (:mod:`cg.trainer`).

The last ``val_fraction`` of every trajectory (``lengths``: frames per replica) validates, in contiguous
blocks (:func:`forcefield.splits.block_split`); Adam with a cosine learning-rate decay per step; an
autoencoder phase, then β and the geometry weights ramp up. Checkpoints are the trainer's plain dicts of
tensors, numbers and strings, written atomically and read back with ``torch.load(weights_only=True)``;
an interrupted run resumes where it stopped and ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from forcefield.splits import block_split

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
    match_equivalent: bool = True  # interchangeable atoms (methyl hydrogens...) matched in their best order in the
    #                                coordinate loss (backmap.losses.equivalent_groups)
    seed: int = 0
    grad_clip: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)


def cosine_adam(params: Any, lr: float, lr_min: float, total: int) -> tuple[torch.optim.Optimizer, Any, str]:
    """Adam with a per-step cosine decay from ``lr`` to ``lr_min`` over ``total`` steps (for the shared trainer)."""
    opt = torch.optim.Adam(params, lr=lr)

    def cosine(s: int) -> float:
        return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(s, total) / total))) / lr

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine), "step"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (``torch.load(weights_only=True)``; :class:`InputError` when unreadable)."""
    from cg.trainer import load_checkpoint as load

    return load(path)


@lru_cache(maxsize=None)
def _module_class() -> type:
    """The Lightning module class, built on first use (importing Lightning takes seconds)."""
    from cg.trainer import TrainModule

    class BackmapModule(TrainModule):
        """Lightning module of the backmapping VAE: loss schedule per global step, validation on the posterior mean."""

        def __init__(self, model: torch.nn.Module, loss_fn: BackmapLoss, cfg: TrainConfig,
                     steps_per_epoch: int) -> None:
            super().__init__()
            self.model, self.loss_fn, self.cfg = model, loss_fn, cfg
            self.steps_per_epoch = steps_per_epoch
            self.total = cfg.epochs * steps_per_epoch
            self.n_ae = min(max(int(cfg.ae_warmup * self.total), cfg.ae_min_steps), self.total // 2)
            self.beta = 0.0

        def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any, str]:
            return cosine_adam(self.model.parameters(), self.cfg.lr, self.cfg.lr_min, self.total)

        def train_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, dict]:
            r, x = batch
            step = self.epoch * self.steps_per_epoch + batch_idx
            ae = step < self.n_ae
            ramp = 0.0 if ae else min(1.0, (step + 1 - self.n_ae) / max(1.0, self.cfg.beta_warmup * self.total))
            self.beta = self.cfg.beta * ramp
            out = self.model(r, x, deterministic=ae, prior_sample=not ae and self.loss_fn.gamma_prior > 0)
            # the bonded and clash terms wait for the autoencoder phase: from the start they would hold the
            # hydrogens at an average placement (they are blind to rotations about bonds) and stall training
            loss, parts = self.loss_fn(out, r, self.beta, ramp)
            return loss, {k: (float(v) * len(r), len(r)) for k, v in parts.items()}

        def val_step(self, batch: Any) -> dict:
            r, x = batch
            out = self.model(r, x)
            rec = self.model.decode(x, out["mu_q"])
            _, parts = self.loss_fn(out, r, self.beta)
            d = {k: (float(v) * len(r), len(r)) for k, v in parts.items()}
            d["rmsd_post"] = (float(torch.sqrt(((rec - r) ** 2).sum(-1).mean(-1)).sum()), len(r))
            return d

        def epoch_line(self, r: dict) -> str:
            return (f"coord {r.get('train_coord', float('nan')):.4f}  kl {r.get('train_kl', float('nan')):.2f}  "
                    f"val RMSD {r.get('val_rmsd_post', float('nan')):.3f} Å  {r['seconds']:.1f} s")

        def history_records(self) -> History:
            """The per-epoch records in the backmapper's format (epoch 1-based, training beta)."""
            h = History()
            for rec in self.history:
                e = int(rec["epoch"]) + 1
                tr = {k[6:]: v for k, v in rec.items() if k.startswith("train_")}
                tr["epoch"], tr["beta"] = e, rec.get("beta", 0.0)
                h.train.append(tr)
                va = {k[4:]: v for k, v in rec.items() if k.startswith("val_")}
                if va:
                    va["epoch"] = e
                    h.val.append(va)
            return h

        def epoch_extra(self) -> dict[str, float]:
            return {"beta": float(self.beta)}

        def load_extra(self, ck: dict) -> None:
            self.beta = float(self.history[-1].get("beta", 0.0)) if self.history else 0.0

    return BackmapModule


def train_model(model: torch.nn.Module, loss_fn: BackmapLoss, R: np.ndarray, X: np.ndarray,
                cfg: TrainConfig, device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None,
                resume: bool = True, progress: bool = True, extra: dict | None = None,
                checkpoint_every: int = 1, lengths: Sequence[int] | None = None,
                log_dir: str | os.PathLike | None = None,
                devices: Any = None, accelerator: str | None = None, strategy: Any = "auto",
                num_nodes: int = 1, stop_after: int | None = None) -> History:
    """Fit ``model`` to atoms R (M, N, 3) and beads X (M, n, 3) (Å).

    Parameters
    ----------
    cfg : optimisation settings.
    device : torch device for training; the model is left there.
    checkpoint : file written every ``checkpoint_every`` epochs (atomically) and at the end; with
        ``resume=True`` an existing file is loaded first and training goes on from its epoch.
    extra : JSON-able dict stored in the checkpoint (e.g. the mapping and model config).
    lengths : frames of each trajectory (replica), in order; the last ``cfg.val_fraction`` of each validates.
    log_dir : folder for ``metrics.csv``. devices, accelerator, strategy, num_nodes : Lightning settings.
    stop_after : end this call after this many epochs in all (the schedules still span ``cfg.epochs``).

    Returns
    -------
    History of per-epoch mean training losses and validation losses (``rmsd_post``: RMSD of the decoded
    posterior mean, Å, without alignment).
    """
    from cg.trainer import TrainerConfig, fit, loader

    M = len(R)
    tr, va = block_split(M, cfg.val_fraction, lengths) if M > 1 else (np.arange(M), np.zeros(0, int))
    Rt = torch.as_tensor(R, dtype=torch.float32)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    steps = max(1, math.ceil(len(tr) / cfg.batch_size))
    module = _module_class()(model, loss_fn, cfg, steps)
    tcfg = TrainerConfig(max_epochs=cfg.epochs, patience=None, monitor="val_rmsd_post", restore_best=False,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, log_dir=log_dir,
                         progress=progress, device=device, accelerator=accelerator, devices=devices,
                         strategy=strategy, num_nodes=num_nodes, grad_clip=cfg.grad_clip, seed=cfg.seed,
                         stop_after=stop_after)
    signature = {"n_frames": M, "n_train": len(tr), "n_val": len(va), "n_atoms": int(Rt.shape[1]),
                 "n_beads": int(Xt.shape[1])}
    payload = {"train_config": json.dumps(cfg.to_dict()), "extra": json.dumps(extra or {}),
               "train_idx": torch.as_tensor(tr), "val_idx": torch.as_tensor(va)}
    val = loader((Rt, Xt), va, 4 * cfg.batch_size, shuffle=False, pad=False) if len(va) else None
    fit(module, loader((Rt, Xt), tr, cfg.batch_size, shuffle=True, seed=cfg.seed), val, tcfg,
        signature=signature, payload=payload, find_unused_parameters=True)
    model.to(device)
    model.eval()
    return module.history_records()
