"""Force matching: fit the network of a :class:`cg.potential.CGPotential` to mapped reference forces.

Loss: mean squared error between model forces and mapped forces (kcal/mol/Å)², averaged over frames,
beads and components (the multiscale coarse-graining / force-matching functional of Noid et al.). The
priors are fixed, so the network is trained on the residual ``F_ref - F_prior`` (computed once); this is
the same loss as on the total force.

Training runs on the shared Lightning trainer (:mod:`cg.trainer`): the last ``val_fraction`` of every
trajectory (``lengths``: frames per replica) validates, contiguous blocks (:func:`forcefield.splits.block_split`);
training frames are shuffled per epoch (seeded by ``(seed, epoch)``); Adam, ReduceLROnPlateau on the
validation force RMSE, early stopping (``patience`` epochs without improvement), a checkpoint after every
epoch (weights_only-safe; ``resume=True`` continues one and ends where an uninterrupted run ends), tqdm
progress (``progress=False`` silences it), ``devices``/``strategy``/``num_nodes`` for data-parallel runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.splits import block_split

from .potential import CGPotential
from .trainer import TrainerConfig, TrainModule, fit, loader


@dataclass
class TrainResult:
    """History of a force-matching run. Errors in kcal/mol/Å (per force component)."""

    train_rmse: list[float] = field(default_factory=list)
    val_rmse: list[float] = field(default_factory=list)
    val_mae: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_rmse: float = float("inf")
    prior_val_rmse: float = float("nan")
    stopped_early: bool = False
    n_train: int = 0
    n_val: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _prior_forces(model: CGPotential, R: torch.Tensor, batch: int, device: Any) -> torch.Tensor:
    out = torch.zeros_like(R)
    if model.priors is None:
        return out
    model.priors.to(device)
    for s in range(0, len(R), batch):
        x = R[s:s + batch].to(device).double().requires_grad_(True)
        (g,) = torch.autograd.grad(model.priors(x).sum(), x)
        out[s:s + batch] = -g.to(out.dtype).cpu()
    return out


@torch.no_grad()
def lipschitz_project(net: torch.nn.Module, bound: float) -> None:
    """Rescale every linear layer of ``net`` whose spectral norm exceeds ``bound`` onto it (CGnet's Lipschitz
    regularisation, Wang et al. 2019): the network's energy then changes at most ∏ bound × (activation
    slopes) per unit of (standardised) input, so it cannot dig deep, narrow wells where the reference has no
    data, which the priors alone would have kept the CG model out of."""
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            s = torch.linalg.matrix_norm(m.weight.double(), ord=2)
            if s > bound:
                m.weight.mul_(float(bound / s))


class ForceMatching(TrainModule):
    """Lightning module: the network's forces -∇U_net against the residual forces ``F_ref - F_prior``."""

    seed_steps = False  # no random draws in a step

    def __init__(self, net: torch.nn.Module, lr: float, weight_decay: float, lr_factor: float, lr_patience: int,
                 min_lr: float, lipschitz: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.opt_kw = dict(lr=lr, weight_decay=weight_decay)
        self.plateau_kw = dict(factor=lr_factor, patience=lr_patience, min_lr=min_lr)
        self.lipschitz = lipschitz

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.lipschitz is not None:
            lipschitz_project(self.net, self.lipschitz)

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any, str]:
        opt = torch.optim.Adam(self.net.parameters(), **self.opt_kw)
        return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **self.plateau_kw), "plateau"

    def _forces(self, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        x = x.to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad(self.net(x).sum(), x, create_graph=create_graph)
        return -g

    def train_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, dict]:
        x, f = batch
        d = self._forces(x, True) - f
        loss = (d**2).mean()
        return loss, {"se": (loss.detach() * d.numel(), d.numel())}

    def val_step(self, batch: Any) -> dict:
        x, f = batch
        with torch.enable_grad():
            d = (self._forces(x, False) - f).detach()
        return {"se": (float((d.double() ** 2).sum()), d.numel()), "ae": (float(d.double().abs().sum()), d.numel())}

    def metrics(self, sums: dict, prefix: str) -> dict[str, float]:
        out = {}
        if "se" in sums:
            s, c = sums["se"]
            out[f"{prefix}rmse"] = float(np.sqrt(s / c)) if c else float("nan")
        if "ae" in sums:
            s, c = sums["ae"]
            out[f"{prefix}mae"] = s / c if c else float("nan")
        return out

    def checkpoint_extra(self) -> dict[str, Any]:
        """The potential and its best network, so that a checkpoint loads with :meth:`CGPotential.load`."""
        pot = getattr(self, "potential", None)
        best = self.best_state
        return {} if pot is None else {
            "potential": pot.state(),
            "best_net": None if best is None else {k[4:]: v for k, v in best.items() if k.startswith("net.")}}

    def epoch_line(self, r: dict) -> str:
        return (f"train RMSE {r.get('train_rmse', float('nan')):.4f}  val RMSE {r.get('val_rmse', float('nan')):.4f}  "
                f"MAE {r.get('val_mae', float('nan')):.4f} kcal/mol/Å  lr {r['lr']:.1e}  {r['seconds']:.1f} s")


def train_force_matching(model: CGPotential, R: np.ndarray, F: np.ndarray, *, epochs: int = 50, batch_size: int = 128,
                         lr: float = 1e-3, weight_decay: float = 0.0, val_fraction: float = 0.1, patience: int = 8,
                         lr_factor: float = 0.5, lr_patience: int = 3, min_lr: float = 1e-5, seed: int = 0,
                         device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
                         resume: bool = True, progress: bool = True, max_seconds: float | None = None,
                         lengths: Sequence[int] | None = None, log_dir: str | Path | None = None,
                         checkpoint_every: int = 1, devices: Any = None, accelerator: str | None = None,
                         strategy: Any = "auto", num_nodes: int = 1, lipschitz: float | None = None) -> TrainResult:
    """Train ``model.net`` by force matching on bead positions R (M, n, 3) Å and forces F (M, n, 3) kcal/mol/Å.

    Parameters
    ----------
    epochs, batch_size, lr, weight_decay : Adam settings (``batch_size`` is the global batch, shared over
        data-parallel ranks).
    val_fraction, lengths : the last ``val_fraction`` of each trajectory validates; ``lengths`` lists the
        frames of each trajectory (replica) in the order they are concatenated (default: one trajectory).
    patience : stop after this many epochs without a lower validation force RMSE.
    lr_factor, lr_patience, min_lr : ReduceLROnPlateau on the validation force RMSE.
    seed : seeds the per-epoch order of training frames.
    device : torch device (sets the Lightning accelerator unless ``accelerator``/``devices`` are given).
    checkpoint, resume, checkpoint_every : checkpoint file (written every ``checkpoint_every`` epochs and at
        the end; ``weights_only``-safe; it also loads as a potential with :meth:`CGPotential.load`); with
        ``resume`` an existing one is continued (same data required).
    max_seconds : bound on wall time (training stops after the epoch that passes it).
    log_dir : folder for ``metrics.csv`` (one row per epoch).
    devices, accelerator, strategy, num_nodes : Lightning settings, e.g. ``devices=2, strategy="ddp"``.
    lipschitz : spectral-norm bound of every linear layer, enforced after each step (:func:`lipschitz_project`).

    Returns
    -------
    TrainResult; the best network (lowest validation force RMSE) is loaded into ``model``.
    """
    if model.net is None:
        raise InputError("the CG potential has no network to train")
    R = np.asarray(R, dtype=np.float32)
    F = np.asarray(F, dtype=np.float32)
    if R.shape != F.shape or R.ndim != 3 or R.shape[1] != model.n_beads:
        raise InputError(f"positions {R.shape} and forces {F.shape} must both be (frames, {model.n_beads}, 3)")
    if not (np.isfinite(R).all() and np.isfinite(F).all()):
        raise InputError("positions or forces contain non-finite values")
    M = len(R)
    if M < 2:
        raise InputError(f"{M} frames are too few for a train/validation split")
    tr, va = block_split(M, max(val_fraction, 1e-9), lengths, min_val=1)
    Rt = torch.from_numpy(R)
    dF = torch.from_numpy(F) - _prior_forces(model, Rt, 1024, device).float()
    module = ForceMatching(model.net, lr, weight_decay, lr_factor, lr_patience, min_lr, lipschitz)
    cfg = TrainerConfig(max_epochs=epochs, patience=patience, min_delta=1e-6, monitor="val_rmse", checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, resume=resume, log_dir=log_dir, progress=progress,
                        device=device, accelerator=accelerator, devices=devices, strategy=strategy,
                        num_nodes=num_nodes, max_seconds=max_seconds, seed=seed)
    signature = {"n_frames": M, "n_train": len(tr), "n_val": len(va), "n_beads": int(model.n_beads)}
    module.__dict__["potential"] = model  # for checkpoint_extra; not a submodule (its weights: ``net``)
    fit(module, loader((Rt, dF), tr, batch_size, shuffle=True, seed=seed),
        loader((Rt, dF), va, 4 * batch_size, shuffle=False, pad=False), cfg, signature=signature,
        find_unused_parameters=True)  # e.g. an energy offset gets no gradient from forces
    model.to(device)
    model.eval()
    h = module.history
    res = TrainResult(train_rmse=[r.get("train_rmse", float("nan")) for r in h],
                      val_rmse=[r.get("val_rmse", float("nan")) for r in h],
                      val_mae=[r.get("val_mae", float("nan")) for r in h], lr=[r["lr"] for r in h],
                      epoch_seconds=[r["seconds"] for r in h], best_epoch=module.best_epoch,
                      best_val_rmse=module.best_value, prior_val_rmse=float(torch.sqrt((dF[va].double() ** 2).mean())),
                      stopped_early=bool(module.stopped_early), n_train=len(tr), n_val=len(va))
    return res

