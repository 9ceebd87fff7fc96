"""Force matching: fit the network of a :class:`cg.potential.CGPotential` to mapped reference forces.

Loss: mean squared error between model forces and mapped forces (kcal/mol/Å)², averaged over frames,
beads and components (the multiscale coarse-graining / force-matching functional of Noid et al.). The
priors are fixed, so the network is trained on the residual ``F_ref - F_prior`` (computed once); this is
the same loss as on the total force.

Training: shuffled minibatches, a held-out validation split, ReduceLROnPlateau on the validation force
RMSE, early stopping (patience), checkpoints after every epoch (atomic ``torch.save``; ``resume=True``
continues from one; ``torch.load(weights_only=True)``), tqdm progress (``progress=False`` silences it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .potential import CGPotential


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
    for s in range(0, len(R), batch):
        x = R[s:s + batch].to(device).double().requires_grad_(True)
        (g,) = torch.autograd.grad(model.priors(x).sum(), x)
        out[s:s + batch] = -g.to(out.dtype).cpu()
    return out


def _eval(model: CGPotential, R: torch.Tensor, dF: torch.Tensor, batch: int, device: Any) -> tuple[float, float]:
    se, ae, cnt = 0.0, 0.0, 0
    for s in range(0, len(R), batch):
        x = R[s:s + batch].to(device).requires_grad_(True)
        (g,) = torch.autograd.grad(model.net(x).sum(), x)
        d = (-g - dF[s:s + batch].to(device)).detach()
        se += float((d**2).sum())
        ae += float(d.abs().sum())
        cnt += d.numel()
    return float(np.sqrt(se / max(cnt, 1))), ae / max(cnt, 1)


def train_force_matching(model: CGPotential, R: np.ndarray, F: np.ndarray, *, epochs: int = 50, batch_size: int = 128,
                         lr: float = 1e-3, weight_decay: float = 0.0, val_fraction: float = 0.1, patience: int = 8,
                         lr_factor: float = 0.5, lr_patience: int = 3, min_lr: float = 1e-5, seed: int = 0,
                         device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
                         resume: bool = True, progress: bool = True, max_seconds: float | None = None) -> TrainResult:
    """Train ``model.net`` by force matching on bead positions R (M, n, 3) Å and forces F (M, n, 3) kcal/mol/Å.

    The best network (lowest validation force RMSE) is loaded into ``model`` at the end. With
    ``checkpoint`` a file is written after every epoch holding the model, optimiser, scheduler, history
    and split; with ``resume=True`` an existing checkpoint is continued (same data expected).
    ``max_seconds`` bounds the wall time (training stops after the epoch that passes it).
    """
    from tqdm.auto import tqdm

    if model.net is None:
        raise InputError("the CG potential has no network to train")
    R = np.asarray(R, dtype=np.float32)
    F = np.asarray(F, dtype=np.float32)
    if R.shape != F.shape or R.ndim != 3 or R.shape[1] != model.n_beads:
        raise InputError(f"positions {R.shape} and forces {F.shape} must both be (frames, {model.n_beads}, 3)")
    if not (np.isfinite(R).all() and np.isfinite(F).all()):
        raise InputError("positions or forces contain non-finite values")
    M = len(R)
    n_val = max(1, int(round(val_fraction * M)))
    if M - n_val < 1:
        raise InputError(f"{M} frames are too few for a train/validation split")
    perm = np.random.default_rng(seed).permutation(M)
    model.to(device)
    Rt = torch.from_numpy(R)
    dF = torch.from_numpy(F) - _prior_forces(model, Rt, 1024, device).float()
    opt = torch.optim.Adam(model.net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=lr_factor, patience=lr_patience, min_lr=min_lr)
    res = TrainResult()
    best_state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    start_epoch, bad_epochs = 0, 0
    ck = Path(checkpoint) if checkpoint else None
    if ck is not None and resume and ck.exists():
        s = torch.load(ck, map_location="cpu", weights_only=True)
        if s.get("n_frames") != M:
            raise InputError(f"{ck}: checkpoint was made with {s.get('n_frames')} frames, the data has {M}")
        model.net.load_state_dict(s["potential"]["net_state"])
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        perm = s["perm"].numpy()
        best_state = s["best_net"]
        res = TrainResult(**s["history"])
        start_epoch, bad_epochs = int(s["epoch"]) + 1, int(s["bad_epochs"])
    tr, va = torch.from_numpy(perm[n_val:]), torch.from_numpy(perm[:n_val])
    res.n_train, res.n_val = len(tr), len(va)
    g = torch.Generator().manual_seed(seed + 1000 * start_epoch)
    if np.isnan(res.prior_val_rmse):
        res.prior_val_rmse = float(torch.sqrt((dF[va] ** 2).mean()))
    t_start = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, epochs):
        if bad_epochs >= patience:
            res.stopped_early = True
            break
        t0 = time.perf_counter()
        order = tr[torch.randperm(len(tr), generator=g)]
        se, cnt = 0.0, 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, mininterval=1.0)
        for s in bar:
            idx = order[s:s + batch_size]
            x = Rt[idx].to(device).requires_grad_(True)
            (grad,) = torch.autograd.grad(model.net(x).sum(), x, create_graph=True)
            loss = ((-grad - dF[idx].to(device)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            se += float(loss.detach()) * idx.numel()
            cnt += idx.numel()
        v_rmse, v_mae = _eval(model, Rt[va], dF[va], 4 * batch_size, device)
        sched.step(v_rmse)
        res.train_rmse.append(float(np.sqrt(se / cnt)))
        res.val_rmse.append(v_rmse)
        res.val_mae.append(v_mae)
        res.lr.append(float(opt.param_groups[0]["lr"]))
        res.epoch_seconds.append(time.perf_counter() - t0)
        if v_rmse < res.best_val_rmse - 1e-6:
            res.best_val_rmse, res.best_epoch, bad_epochs = v_rmse, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
        else:
            bad_epochs += 1
        if progress:
            print(f"epoch {epoch + 1}: train RMSE {res.train_rmse[-1]:.4f}  val RMSE {v_rmse:.4f}  "
                  f"MAE {v_mae:.4f} kcal/mol/Å  lr {res.lr[-1]:.1e}  {res.epoch_seconds[-1]:.1f} s", flush=True)
        if ck is not None:
            with atomic_path(ck) as tmp:
                torch.save({"potential": model.state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "perm": torch.from_numpy(perm), "best_net": best_state, "history": res.as_dict(),
                            "epoch": epoch, "bad_epochs": bad_epochs, "n_frames": M}, tmp)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
    model.net.load_state_dict(best_state)
    model.eval()
    return res
