"""Active learning of the kernel force field on its own MD (uncertainty-driven, FLARE-style, in rounds).

Each round: Langevin MD with the current model on many replicas; the predicted force std
(:mod:`forcefield.kernel.uncertainty`) of every saved frame; a spot check of the model on random MD frames
labelled by the reference (``label_fn``); stop when the spot-check force MAE is at most ``target_ratio``
times the held-out MAE and no replica blew up. Otherwise the frames with the largest std are labelled
(spread out: greedy farthest points in descriptor space among the top candidates, so not neighbours of one
trajectory), added with the spot-check frames to the training set, the model is refitted, and the replicas
continue from where they stopped (blown-up ones restart from training frames).

Unlike FLARE, which interrupts one MD run whenever an atom's std crosses a threshold, the replicas here run
a fixed stretch per round and the most uncertain frames of all of them are labelled in one batch (the
kernel model is refitted globally, so batches amortise the refit).

State is written atomically after every round into ``workdir`` (model, training set, replica positions, log);
running again with the same ``workdir`` continues after the last completed round.
Units: Å, kcal/mol, kcal/mol/Å, fs, K.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..dataset import Dataset, load_dataset
from ..errors import InputError
from ..fileio import atomic_path, load_npz, save_npz
from .descriptor import descriptor
from .model import KernelForceField

LabelFn = Callable[[Dataset], Dataset]
LOG_FIELDS = ("round", "train_frames", "frames_added", "md_frames", "unstable_replicas", "std_mean", "std_max",
              "spot_mae", "heldout_mae", "ratio", "picked_mae", "picked_ratio", "fit_s", "md_s", "label_s", "round_s")


class ActiveConfig(BaseModel):
    """Settings of :func:`active_learn` (defaults sized for alanine dipeptide, ~5 min on 2 cores)."""

    model_config = ConfigDict(extra="forbid")

    max_rounds: int = Field(3, ge=0, description="labelling rounds at most (the last model is always checked)")
    replicas: int = Field(16, ge=1)
    md_steps: int = Field(500, ge=1, description="MD steps per replica and round")
    save_every: int = Field(10, ge=1)
    timestep_fs: float = Field(1.0, gt=0)
    temperature: float = Field(300.0, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    temperatures: int = Field(1, ge=1, description="temperatures per replica-exchange ladder (1: plain MD at "
                                                   "`temperature`); explore what a REMD reference will visit")
    max_temperature: float = Field(450.0, gt=0, description="K, top of each ladder (geometric spacing)")
    exchange_every: int = Field(25, ge=1, description="MD steps between exchange sweeps")
    hydrogen_mass: Optional[float] = Field(None, gt=0, description="amu, hydrogen mass repartitioning")
    max_bond_change: float = Field(0.5, gt=0, description="Å; the stability rule of run_md")
    frames_per_round: int = Field(30, ge=1, description="most uncertain frames labelled per round")
    candidate_factor: int = Field(4, ge=1, description="farthest-point picks among this many x frames_per_round "
                                                        "frames of largest std")
    spot_checks: int = Field(20, ge=1, description="random MD frames labelled per round for the spot check")
    add_spot_checks: bool = Field(True, description="also train on the spot-check frames (labels are paid)")
    target_ratio: float = Field(1.5, gt=0, description="stop at spot-check MAE <= target_ratio x held-out MAE")
    uncertain_ratio: Optional[float] = Field(None, gt=0, description="and (if set) at force MAE of the labelled "
                                                                     "most uncertain frames <= uncertain_ratio x "
                                                                     "held-out MAE (worst-case check)")
    sigma: Optional[Union[float, list[float]]] = Field(None, description="None: keep the model's σ each refit")
    cholesky_max: int = Field(8000, ge=0, description="direct solve up to this many unknowns (8 n² bytes, twice "
                                                     "at the peak; PCG beyond: alanine dipeptide, 290 frames, "
                                                     "19,140 unknowns: 77 s against 177 s, same held-out MAE)")
    std_rank: Optional[int] = Field(None, description="rank of the low-rank posterior std (None: automatic); "
                                                      "only for models with std_method='posterior'")
    seed: int = 0
    progress: bool = False


@dataclass
class ActiveResult:
    """Outcome of :func:`active_learn`: the final model, its training set and the per-round log."""

    model: KernelForceField
    train: Dataset
    log: list[dict] = field(default_factory=list)
    converged: bool = False

    @property
    def rounds(self) -> int:
        """Labelling rounds done (frames were added in each)."""
        return sum(1 for r in self.log if r.get("frames_added", 0) > 0)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "kernel.npz")
        self.train.save(folder / "train.npz")
        _write_json(folder / "active_log.json", {"converged": self.converged, "rounds": self.log})
        write_csv(folder / "active_log.csv", self.log)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ActiveResult":
        folder = Path(folder)
        if not (folder / "active_log.json").exists():
            raise InputError(f"{folder}: no active_log.json (not an active-learning result)")
        log = json.loads((folder / "active_log.json").read_text())
        return cls(KernelForceField.load(folder / "kernel.npz", device=device), load_dataset(folder / "train.npz"),
                   log["rounds"], bool(log["converged"]))


def _write_json(path: Path, obj) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def write_csv(path: str | Path, log: list[dict]) -> None:
    """The round log as CSV (one row per round), atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        lines = [",".join(LOG_FIELDS)]
        lines += [",".join("" if r.get(k) is None else f"{r[k]:.6g}" if isinstance(r.get(k), float) else str(r[k])
                           for k in LOG_FIELDS) for r in log]
        tmp.write_text("\n".join(lines) + "\n")


def farthest_points(X: torch.Tensor, k: int, first: int = 0, q: torch.Tensor | None = None) -> list[int]:
    """Greedy farthest-point picks of k rows of descriptors X (n, D), from row ``first``.

    With descriptor permutations q (P, D) the distance is the smallest over the permuted copies, so
    frames that differ only by a symmetry (a turned methyl group) count as close.
    """
    n = len(X)
    k = min(k, n)
    Xp = X[:, q] if q is not None else X[:, None]  # (n, P, D)
    picks = [int(first)]
    dmin = torch.full((n,), float("inf"), dtype=X.dtype, device=X.device)
    for _ in range(k - 1):
        d = ((Xp - X[picks[-1]][None, None]) ** 2).sum(-1).amin(1)
        dmin = torch.minimum(dmin, d)
        dmin[picks] = -1.0
        picks.append(int(torch.argmax(dmin)))
    return picks


def select_frames(ff: KernelForceField, R: np.ndarray, std: np.ndarray, k: int, candidate_factor: int = 4
                  ) -> np.ndarray:
    """Indices of k frames of R to label: farthest points in descriptor space among the
    ``candidate_factor * k`` frames of largest predicted RMS std (the first pick is the largest)."""
    s = np.sqrt((np.asarray(std) ** 2).mean(1))
    top = np.argsort(-s, kind="stable")[:max(k, candidate_factor * k)]
    d, _, _ = descriptor(torch.as_tensor(R[top], dtype=torch.float64, device=ff.device))
    picks = farthest_points(d, k, first=0, q=ff._dk.q)
    return top[np.asarray(picks, dtype=int)]


def _default_label_fn(ds: Dataset) -> Dataset:
    from ..reference import label_dataset

    return label_dataset(ds, progress=False)


def _refit(ff: KernelForceField, train: Dataset, cfg: ActiveConfig) -> KernelForceField:
    sigma = ff.sigma_ if cfg.sigma is None else cfg.sigma
    new = KernelForceField(sigma=sigma, lam=ff.lam, perms=ff.perms, energy_constraints=ff.energy_constraints,
                           cholesky_max=cfg.cholesky_max, device=ff.device, progress=cfg.progress,
                           std_method=getattr(ff, "std_method", "separable"))
    new.fit(train.R, train.z, F=train.F, E=train.E, seed=cfg.seed)
    if cfg.std_rank is not None:
        new.std_options = {"rank": cfg.std_rank}
    return new


def _mae(ff: KernelForceField, ds: Dataset) -> float:
    _, F = ff.predict(ds.R)
    return float(np.abs(F - ds.F).mean())


def active_learn(ff: KernelForceField, train: Dataset, test: Dataset, starts: np.ndarray,
                 label_fn: LabelFn | None = None, config: ActiveConfig | dict | None = None,
                 workdir: str | Path | None = None) -> ActiveResult:
    """Grow the training set of a fitted kernel force field from its own MD until it is self-consistent.

    Parameters
    ----------
    ff : the fitted model (round 0); its σ, symmetries and λ are kept when refitting.
    train : its training frames (R Å, F kcal/mol/Å, E kcal/mol) — new frames are appended to these.
    test : held-out labelled frames for the held-out MAE (never trained on).
    starts : (B, N, 3) or (N, 3) Å start geometries of the MD replicas (cycled if fewer than ``replicas``).
    label_fn : Dataset -> Dataset with reference E and F (default GFN2-xTB, forcefield.reference.label_dataset).
    config : :class:`ActiveConfig` (or its fields as a dict).
    workdir : folder for the resumable state and the log; a re-run with the same folder continues.

    Returns
    -------
    :class:`ActiveResult` (also saved in ``workdir``).
    """
    cfg = config if isinstance(config, ActiveConfig) else ActiveConfig(**(config or {}))
    label_fn = label_fn or _default_label_fn
    if train.F is None or test.F is None:
        raise InputError("active learning needs forces in the training and held-out sets")
    if not (np.array_equal(train.z, ff.z) and np.array_equal(test.z, ff.z)):
        raise InputError("the training/held-out atoms do not match the model's")
    starts = np.asarray(starts, dtype=float)
    starts = starts[None] if starts.ndim == 2 else starts
    if starts.ndim != 3 or starts.shape[1:] != (ff.n_atoms, 3) or not len(starts):
        raise InputError(f"starts must be (B, {ff.n_atoms}, 3) Å, got {starts.shape}")
    starts = starts[np.arange(cfg.replicas) % len(starts)]
    wd = Path(workdir) if workdir is not None else None
    log: list[dict] = []
    first = 0
    converged = False
    if wd is not None and (wd / "state.json").exists():  # resume
        st = json.loads((wd / "state.json").read_text())
        log, first, converged = st["rounds"], int(st["next_round"]), bool(st["converged"])
        files = st["files"]
        ff = KernelForceField.load(wd / files["kernel"], device=ff.device)
        if cfg.std_rank is not None:
            ff.std_options = {"rank": cfg.std_rank}
        train = load_dataset(wd / files["train"])
        starts = load_npz(wd / files["starts"])["R"]
    elif cfg.std_rank is not None:
        ff.std_options = {"rank": cfg.std_rank}
    for k in range(first, cfg.max_rounds + 1):
        if converged:
            break
        row, ff, train, starts, converged = _round(k, ff, train, test, starts, label_fn, cfg)
        log.append(row)
        if wd is not None:
            _save_state(wd, ff, train, starts, log, k + 1, converged)
        if cfg.progress:
            print(" ".join(f"{key}={row[key]:.4g}" if isinstance(row[key], float) else f"{key}={row[key]}"
                           for key in LOG_FIELDS if key in row), flush=True)
    res = ActiveResult(ff, train, log, converged)
    if wd is not None:
        res.save(wd)
    return res


def _save_state(wd: Path, ff, train, starts, log, next_round: int, converged: bool) -> None:
    """Files of this state under new names, then ``state.json`` pointing at them (the commit), then cleanup:
    an interruption at any point leaves the previous state intact."""
    wd.mkdir(parents=True, exist_ok=True)
    files = {"kernel": f"kernel_r{next_round}.npz", "train": f"train_r{next_round}.npz",
             "starts": f"starts_r{next_round}.npz"}
    ff.save(wd / files["kernel"])
    train.save(wd / files["train"])
    save_npz(wd / files["starts"], R=np.asarray(starts))
    write_csv(wd / "active_log.csv", log)
    _write_json(wd / "state.json", {"next_round": next_round, "converged": converged, "rounds": log, "files": files})
    for pattern in ("kernel_r*.npz", "train_r*.npz", "starts_r*.npz"):
        for f in wd.glob(pattern):
            if f.name not in files.values():
                f.unlink()


def _round(k: int, ff: KernelForceField, train: Dataset, test: Dataset, starts: np.ndarray, label_fn: LabelFn,
           cfg: ActiveConfig):
    """One check (and, unless converged or the last round, one labelling step) of active learning."""
    from .md import run_md

    t0 = time.perf_counter()
    heldout = _mae(ff, test)
    t1 = time.perf_counter()
    exchange = None
    if cfg.temperatures > 1:
        from ..remd import TemperatureLadders

        exchange = TemperatureLadders.geometric(cfg.temperature, cfg.max_temperature, cfg.temperatures, len(starts),
                                                cfg.exchange_every, seed=cfg.seed + k, what="active learning: ")
    traj = run_md(ff, starts, n_steps=cfg.md_steps, save_every=cfg.save_every, dt_fs=cfg.timestep_fs,
                  temperature=cfg.temperature, friction_per_ps=cfg.friction_per_ps, seed=cfg.seed + 1000 * k,
                  max_bond_change=cfg.max_bond_change, progress=cfg.progress, exchange=exchange,
                  hydrogen_mass=cfg.hydrogen_mass)
    R, at_target = [], []
    for b in range(traj.R.shape[1]):
        Rb = traj.replica(b)[0]
        R.append(Rb)
        mask = np.zeros(len(Rb), dtype=bool)
        mask[traj.at_temperature(b, cfg.temperature)] = True
        at_target.append(mask)
    R = np.concatenate(R) if R else np.zeros((0, ff.n_atoms, 3))
    at_target = np.concatenate(at_target) if at_target else np.zeros(0, dtype=bool)
    unstable = len(traj.stopped)
    t_md = time.perf_counter() - t1
    if not len(R):
        raise RuntimeError(f"active learning round {k}: every replica blew up before its first saved frame")
    _, _, std = ff.predict(R, return_std=True)
    s = np.sqrt((std ** 2).mean(1))
    rng = np.random.default_rng(cfg.seed + 7919 * (k + 1))
    pool = np.flatnonzero(at_target) if at_target.any() else np.arange(len(R))  # the ensemble to validate
    spot = np.sort(rng.choice(pool, min(cfg.spot_checks, len(pool)), replace=False))
    t2 = time.perf_counter()
    spot_ds = label_fn(Dataset(R=R[spot], z=ff.z, name="spot check"))
    t_label = time.perf_counter() - t2
    _, Fs = ff.predict(spot_ds.R)
    spot_mae = float(np.abs(Fs - spot_ds.F).mean())
    ratio = spot_mae / heldout if heldout > 0 else float("nan")
    row = {"round": k, "train_frames": len(train), "frames_added": 0, "md_frames": len(R),
           "unstable_replicas": unstable, "std_mean": float(s.mean()), "std_max": float(s.max()),
           "spot_mae": spot_mae, "heldout_mae": heldout, "ratio": ratio, "fit_s": 0.0, "md_s": t_md}
    converged = bool(ratio <= cfg.target_ratio and unstable == 0)
    # the most uncertain frames (diverse) are labelled in every round that may add them, and with
    # ``uncertain_ratio`` in every round: random spot checks rarely land in a rare region where the model is
    # wrong (a hole the long reference MD will find), the uncertainty-picked frames do
    picked_ds = None
    free = np.setdiff1d(np.arange(len(R)), spot)
    if len(free) and ((not converged and k < cfg.max_rounds) or cfg.uncertain_ratio is not None):
        pick = free[select_frames(ff, R[free], std[free], cfg.frames_per_round, cfg.candidate_factor)]
        t2 = time.perf_counter()
        picked_ds = label_fn(Dataset(R=R[pick], z=ff.z, name="active"))
        t_label += time.perf_counter() - t2
        if cfg.uncertain_ratio is not None:
            _, Fp = ff.predict(picked_ds.R)
            row["picked_mae"] = float(np.abs(Fp - picked_ds.F).mean())
            row["picked_ratio"] = row["picked_mae"] / heldout if heldout > 0 else float("nan")
            converged = bool(converged and row["picked_ratio"] <= cfg.uncertain_ratio)
    next_starts = _next_starts(traj, train, rng)
    if not converged and k < cfg.max_rounds:
        parts = [train] + ([_as_train(spot_ds, train)] if cfg.add_spot_checks else [])
        if picked_ds is not None:
            parts.append(_as_train(picked_ds, train))
        if len(parts) > 1:
            train = Dataset.concatenate(parts)
            t3 = time.perf_counter()
            ff = _refit(ff, train, cfg)
            row.update(frames_added=len(train) - row["train_frames"], fit_s=time.perf_counter() - t3)
    row.update(label_s=t_label, round_s=time.perf_counter() - t0)
    return row, ff, train, next_starts, converged


def _as_train(ds: Dataset, like: Dataset) -> Dataset:
    """Labelled frames in the training set's layout (name, theory; no extra arrays)."""
    return Dataset(R=ds.R, z=like.z, E=None if like.E is None else ds.E, F=ds.F, name=like.name,
                   theory=like.theory)


def _next_starts(traj, train: Dataset, rng: np.random.Generator) -> np.ndarray:
    """Each replica's last saved frame; a replica that blew up restarts from a random training frame."""
    out = []
    stopped = {b for b, _, _ in traj.stopped}
    for b in range(traj.R.shape[1]):
        n = int(traj.n_valid[b])
        if b in stopped or n == 0:
            out.append(train.R[rng.integers(len(train))])
        else:
            out.append(traj.R[n - 1, b])
    return np.stack(out)


def plot_rounds(log: list[dict], path: str | Path) -> Path:
    """A figure of the rounds: held-out and spot-check force MAE, their ratio, and the predicted std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        raise InputError("no active-learning rounds to plot")
    k = [r["round"] for r in log]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(k, [r["heldout_mae"] for r in log], "o-", label="held-out MAE")
    ax[0].plot(k, [r["spot_mae"] for r in log], "s-", label="spot-check MAE (own MD)")
    ax[0].plot(k, [r["std_mean"] for r in log], "^--", label="mean predicted std")
    ax[0].set_xlabel("round")
    ax[0].set_ylabel("kcal/mol/Å")
    ax[0].legend(fontsize=8)
    ax[1].plot(k, [r["ratio"] for r in log], "o-", color="C3")
    ax[1].axhline(1.5, ls=":", color="k")
    ax[1].set_xlabel("round")
    ax[1].set_ylabel("spot-check / held-out MAE")
    for a in ax:
        a.set_xticks(k)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
