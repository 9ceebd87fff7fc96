"""One trainer for every network of the workbench, on PyTorch Lightning.

Force matching (:mod:`cg.train`), the mapping autoencoder (:mod:`cg.autoencoder`) and the backmapping VAE
(:mod:`backmap.train`) each write a :class:`TrainModule` (what one step computes) and call :func:`fit`
(how training runs). The machinery lives here once:

* data (:mod:`cg.batches`): index batches from :class:`EpochBatchSampler`. The training order of epoch ``e`` is a permutation
  drawn from a generator seeded by ``(seed, e)``, so a resumed run sees the same batches as an
  uninterrupted one. Under data parallelism every global batch is split over the ranks (each rank takes
  ``batch[rank::world]``), so the optimiser sees the same global batches as a one-process run.
  Train/validation splits of MD frames come from :func:`forcefield.splits.block_split` (contiguous blocks);
  this module never shuffles frames into validation.
* validation metrics are sums reduced over ranks (exact, whatever the shard sizes), then turned into
  metrics by the module; the monitored one drives :class:`lightning.pytorch.callbacks.EarlyStopping`, the
  best-weights copy and a ``ReduceLROnPlateau`` schedule (stepped by the module, so its state is exact in
  checkpoints).
* checkpoints: :class:`EpochCheckpoint` writes our own file after an epoch (every ``checkpoint_every``,
  at the last and when stopping), atomically, from rank 0: a plain dict of tensors, numbers, strings
  (module weights, optimiser and scheduler state, early-stopping state, history, best weights, per-module
  extras). It loads with ``torch.load(weights_only=True)`` and never unpickles code. Lightning's own
  checkpoint format (which pickles hyper-parameters and loop objects) is not used. Resuming loads that
  file and runs the remaining epochs with an epoch offset.
* ``devices``, ``accelerator``, ``strategy`` and ``num_nodes`` go to :class:`lightning.Trainer` unchanged,
  so DDP over GPUs or machines is a setting (``strategy="ddp"``; on CPU it uses gloo).
* a CSV log (one row per epoch, ``metrics.csv``) where ``log_dir`` is given; a tqdm progress bar that
  ``progress=False`` silences; Lightning's info messages and its advice warnings are silenced.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping

from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .batches import EpochBatchSampler, loader  # noqa: F401  (re-exported: the trainer's one API)

FORMAT = "cgworkbench-train-checkpoint"


@dataclass
class TrainerConfig:
    """How a network is trained (not what it learns).

    Parameters
    ----------
    max_epochs : total epochs (a resumed run counts the epochs already done).
    patience : stop after this many epochs without improvement of ``monitor`` (None: never stop early).
    min_delta : an improvement must beat the best value by more than this.
    monitor : the validation metric (logged by the module) for early stopping and the best weights.
    restore_best : load the weights of the best epoch at the end (else keep the last).
    checkpoint : file written after every ``checkpoint_every`` epochs (and at the end); with ``resume`` an
        existing one is continued.
    log_dir : folder for ``metrics.csv`` (one row per epoch); None: no log file.
    progress : tqdm progress bar and one line per epoch.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:1"``... picks ``accelerator``/``devices`` when they are None.
    accelerator, devices, strategy, num_nodes : passed to :class:`lightning.Trainer` (e.g. ``devices=2,
        strategy="ddp"``; ``num_nodes`` for several machines).
    grad_clip : clip the gradient norm to this value (None: no clipping).
    max_seconds : stop after the epoch during which this wall time (of this call) is passed.
    stop_after : end this call once this many epochs are done in all (a job's time slice, or an interruption
        in tests); schedules still span ``max_epochs`` and a later call resumes.
    seed : seeds the per-epoch data order and random draws.
    """

    max_epochs: int = 50
    patience: int | None = None
    min_delta: float = 1e-6
    monitor: str | None = "val_loss"
    restore_best: bool = True
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 1
    resume: bool = True
    log_dir: str | os.PathLike | None = None
    progress: bool = True
    device: str | torch.device | None = None
    accelerator: str | None = None
    devices: int | str | list[int] | None = None
    strategy: Any = "auto"
    num_nodes: int = 1
    grad_clip: float | None = None
    max_seconds: float | None = None
    stop_after: int | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in d.items()}


def accelerator_devices(device: Any, accelerator: str | None, devices: Any) -> tuple[str, Any]:
    """Lightning ``(accelerator, devices)`` from a torch device string unless given explicitly."""
    if accelerator is not None and devices is not None:
        return accelerator, devices
    d = torch.device(device) if device is not None else None
    if accelerator is None:
        accelerator = "auto" if d is None else {"cuda": "gpu", "cpu": "cpu", "mps": "mps"}.get(d.type, d.type)
    if devices is None:
        devices = [d.index] if d is not None and d.index is not None else (1 if d is not None else "auto")
    return accelerator, devices


# ----------------------------------------------------------------------------------------- module
class TrainModule(L.LightningModule):
    """Base of every trained model: subclasses fill in the steps, the base keeps history and state.

    Subclasses implement
    * ``make_optimizer() -> (optimizer, scheduler or None, "epoch" | "step" | "plateau")``;
    * ``train_step(batch, batch_idx) -> (loss, {name: (sum, count)})`` (sums are detached tensors or floats);
    * optionally ``val_step(batch) -> {name: (sum, count)}`` and ``metrics(sums, prefix) -> {name: value}``
      (default: sum / count per name, prefixed);
    * optionally ``checkpoint_extra() -> dict`` (weights_only-safe entries added to the checkpoint file at
      its top level), ``load_extra(checkpoint)``, ``epoch_extra() -> dict`` (more numbers for the epoch's
      record) and ``epoch_line(record) -> str`` (printed with ``progress``).

    History: ``self.history`` holds one dict per epoch (``epoch`` 0-based, training metrics ``train_*``,
    validation metrics ``val_*``, ``lr``, ``seconds``).
    """

    monitor_mode = "min"
    seed_steps = True  # reseed the global generators before every step (modules that draw no noise: False)

    def __init__(self) -> None:
        super().__init__()
        self.seed = 0
        self.epoch_offset = 0
        self.history: list[dict[str, float]] = []
        self.best_value = float("inf")
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.min_delta = 1e-6
        self.monitor: str | None = None
        self.scheduler: Any = None
        self.interval = "epoch"
        self._pending: dict[str, Any] | None = None
        self._acc: dict[str, list] = {}
        self._val_record: dict[str, float] = {}
        self._t0 = 0.0
        self._print_epochs = False

    # -- to implement
    def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any, str]:
        raise NotImplementedError

    def train_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, dict[str, tuple[Any, Any]]]:
        raise NotImplementedError

    def val_step(self, batch: Any) -> dict[str, tuple[Any, Any]]:
        raise NotImplementedError

    def metrics(self, sums: dict[str, tuple[float, float]], prefix: str) -> dict[str, float]:
        return {f"{prefix}{k}": s / c if c else float("nan") for k, (s, c) in sums.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def load_extra(self, d: dict[str, Any]) -> None:
        pass

    def epoch_extra(self) -> dict[str, float]:
        """More numbers for this epoch's history record (e.g. a schedule's current value)."""
        return {}

    def epoch_line(self, rec: dict[str, float]) -> str:
        return "  ".join(f"{k} {v:.4g}" for k, v in rec.items() if k != "epoch")

    # -- shared machinery
    @property
    def epoch(self) -> int:
        """Epoch counted over all runs of a resumed training (0-based)."""
        return self.epoch_offset + self.current_epoch

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def configure_optimizers(self) -> Any:
        opt, self.scheduler, self.interval = self.make_optimizer()
        if self._pending is not None:
            opt.load_state_dict(self._pending["optimizer"])
            if self.scheduler is not None and self._pending.get("scheduler") is not None:
                self.scheduler.load_state_dict(self._pending["scheduler"])
        return opt

    def _add(self, key: str, sums: dict[str, tuple[Any, Any]]) -> None:
        acc = self._acc.setdefault(key, {})
        for k, (s, c) in sums.items():
            s0, c0 = acc.get(k, (0.0, 0.0))
            acc[k] = (s0 + (s.detach() if torch.is_tensor(s) else s), c0 + c)

    def _reduced(self, key: str) -> dict[str, tuple[float, float]]:
        acc = self._acc.pop(key, {})
        if not acc:
            return {}
        names = sorted(acc)
        t = torch.tensor([[float(acc[k][0]), float(acc[k][1])] for k in names], dtype=torch.float64,
                         device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return {k: (float(t[i, 0]), float(t[i, 1])) for i, k in enumerate(names)}

    def on_fit_start(self) -> None:
        # Lightning's CSV writer starts a new metrics.csv: a resumed run writes the epochs done before again
        if self.logger is not None:
            for rec in self.history:
                self.logger.log_metrics(dict(rec), step=int(rec["epoch"]))

    def on_train_epoch_start(self) -> None:
        self._t0 = time.perf_counter()
        self._val_record = {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # random draws of a step (noise, dropout) from the global generator seeded by (seed, epoch, step, rank):
        # a resumed run draws what an uninterrupted one draws, whatever Lightning's loops draw in between
        if not self.seed_steps:
            return
        s = int(np.random.SeedSequence([self.seed, self.epoch, batch_idx, self.global_rank]).generate_state(1)[0])
        torch.default_generator.manual_seed(s)  # (torch.manual_seed costs milliseconds: it visits every backend)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(s)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, sums = self.train_step(batch, batch_idx)
        self._add("train", sums)
        if self._print_epochs:  # only the progress bar shows it
            self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._add("val", self.val_step(batch))

    def on_validation_epoch_end(self) -> None:
        rec = self.metrics(self._reduced("val"), "val_")
        self._val_record = rec
        if self.monitor is not None and self.monitor in rec:
            v = rec[self.monitor]
            # float64: early stopping compares with min_delta exactly as the best-weights copy does
            self.log(self.monitor, torch.tensor(float(v), dtype=torch.float64, device=self.device), prog_bar=True,
                     logger=False, sync_dist=False)
            if v < self.best_value - self.min_delta:
                self.best_value, self.best_epoch = float(v), self.epoch
                self.best_state = self.trained_state()

    def on_train_epoch_end(self) -> None:
        rec: dict[str, float] = {"epoch": float(self.epoch)}
        rec.update(self.metrics(self._reduced("train"), "train_"))
        rec.update(self._val_record)
        if self.scheduler is not None and self.interval == "plateau":
            if self.monitor in self._val_record:
                self.scheduler.step(self._val_record[self.monitor])
        elif self.scheduler is not None and self.interval == "epoch":
            self.scheduler.step()
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        rec["lr"] = float(opt.param_groups[0]["lr"])
        rec["seconds"] = time.perf_counter() - self._t0
        rec.update(self.epoch_extra())
        self.history.append(rec)
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in rec.items()}, step=int(rec["epoch"]))
        if getattr(self, "_print_epochs", False):
            self.print(f"epoch {int(rec['epoch']) + 1}: {self.epoch_line(rec)}")

    # -- checkpoint payload
    def train_state(self, trainer: L.Trainer | None, stopped: bool) -> dict[str, Any]:
        opt = self.optimizers() if trainer is not None else None
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        es = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, EarlyStopping)]
        return {"format": FORMAT, "version": 1, "epoch": int(self.history[-1]["epoch"]) if self.history else -1,
                "epochs_done": len(self.history), "module": self.trained_state(),
                "optimizer": None if opt is None else opt.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "early_stopping": es[0].state_dict() if es else None, "stopped_early": bool(stopped),
                "history": [dict(h) for h in self.history], "best_value": self.best_value,
                "best_epoch": self.best_epoch, "best_state": self.best_state, **self.checkpoint_extra()}

    def load_train_state(self, ck: dict[str, Any]) -> None:
        self.load_state_dict(ck["module"])
        self.history = [dict(h) for h in ck["history"]]
        self.best_value, self.best_epoch = float(ck["best_value"]), int(ck["best_epoch"])
        self.best_state = ck["best_state"]
        self.epoch_offset = int(ck["epochs_done"])
        self._pending = {"optimizer": ck["optimizer"], "scheduler": ck["scheduler"]}
        self.load_extra(ck)


# ----------------------------------------------------------------------------------------- callbacks
class EpochCheckpoint(Checkpoint):
    """Write the module's weights_only-safe training state after an epoch (rank 0, atomic ``torch.save``)."""

    def __init__(self, path: str | os.PathLike, every: int, max_epochs: int, payload: dict[str, Any]) -> None:
        self.path, self.every, self.max_epochs, self.payload = Path(path), max(1, int(every)), max_epochs, payload

    def on_train_epoch_end(self, trainer: L.Trainer, module: TrainModule) -> None:
        done = len(module.history)
        es = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
        stopped = bool(es and es[0].wait_count >= es[0].patience)
        if done % self.every and done < self.max_epochs and not trainer.should_stop:
            return
        if trainer.is_global_zero:
            save_checkpoint(self.path, {**module.train_state(trainer, stopped), **self.payload})


class WallClock(Callback):
    """Stop after the epoch during which ``seconds`` of wall time have passed (all ranks agree)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = float(seconds), time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        late = time.perf_counter() - self.t0 > self.seconds
        if trainer.strategy.reduce_boolean_decision(late, all=False):
            trainer.should_stop = True


# ----------------------------------------------------------------------------------------- files
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic ``torch.save`` of a dict of tensors, numbers, strings, lists and dicts."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; clear errors for missing or bad files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise InputError(f"{path}: not a readable checkpoint ({e})") from e


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info messages and its advice warnings (workers, logging interval...)."""
    names = ["lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            from lightning.fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
            yield
    finally:
        for n, lv in old.items():
            logging.getLogger(n).setLevel(lv)


# ----------------------------------------------------------------------------------------- fit
def fit(module: TrainModule, train: torch.utils.data.DataLoader, val: torch.utils.data.DataLoader | None,
        cfg: TrainerConfig, signature: dict[str, Any] | None = None, payload: dict[str, Any] | None = None,
        find_unused_parameters: bool = False) -> TrainModule:
    """Train ``module`` on the ``train`` (and ``val``) loaders with the settings of ``cfg``.

    Parameters
    ----------
    signature : weights_only-safe description of the data (frame counts, split sizes); a checkpoint made
        with another signature is refused (:class:`InputError`) instead of resumed.
    payload : extra entries of every checkpoint file (e.g. what lets a checkpoint load as a model).
    find_unused_parameters : for DDP, when some parameters get no gradient in some steps.

    Returns
    -------
    The module (weights of the best epoch when ``cfg.restore_best`` and a monitor was logged); its
    ``history`` lists every epoch, ``stopped_early`` says whether patience ran out.
    """
    module.seed, module.min_delta, module.monitor = int(cfg.seed), float(cfg.min_delta), cfg.monitor
    module._print_epochs = bool(cfg.progress)
    signature = dict(signature or {})
    stopped = False
    es_state = None
    ck_path = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ck_path is not None and cfg.resume and ck_path.exists():
        ck = load_checkpoint(ck_path)
        if ck.get("format") != FORMAT:
            raise InputError(f"{ck_path}: not a training checkpoint of this workbench (format {ck.get('format')!r})")
        if dict(ck.get("signature") or {}) != signature:
            raise InputError(f"{ck_path}: checkpoint was made for other data ({ck.get('signature')}), "
                             f"this run has {signature}; remove it or pass resume=False")
        module.load_train_state(ck)
        stopped, es_state = bool(ck.get("stopped_early")), ck.get("early_stopping")
    module.stopped_early = stopped
    end = int(cfg.max_epochs) if cfg.stop_after is None else min(int(cfg.max_epochs), int(cfg.stop_after))
    remaining = end - module.epoch_offset
    for dl in (train, val):
        if dl is not None and isinstance(dl.sampler, EpochBatchSampler):
            dl.sampler.offset, dl.sampler.seed = module.epoch_offset, int(cfg.seed)
    if remaining > 0 and not stopped and len(train) > 0:
        callbacks: list[Callback] = []
        es = None
        if cfg.patience is not None and cfg.monitor is not None and val is not None:
            es = EarlyStopping(monitor=cfg.monitor, min_delta=cfg.min_delta, patience=int(cfg.patience),
                               mode=module.monitor_mode, check_on_train_epoch_end=False, verbose=False)
            if es_state is not None:
                es.load_state_dict(es_state)
            callbacks.append(es)
        if cfg.max_seconds is not None:
            callbacks.append(WallClock(cfg.max_seconds))
        if ck_path is not None:
            callbacks.append(EpochCheckpoint(ck_path, cfg.checkpoint_every, end,
                                             {**(payload or {}), "signature": signature}))
        logger: Any = False
        if cfg.log_dir is not None:
            from lightning.pytorch.loggers import CSVLogger

            logger = CSVLogger(save_dir=str(cfg.log_dir), name="", version="")
        if cfg.progress:
            from lightning.pytorch.callbacks import TQDMProgressBar

            callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train) // 20)))
        accelerator, devices = accelerator_devices(cfg.device, cfg.accelerator, cfg.devices)
        strategy = cfg.strategy
        if find_unused_parameters and strategy in ("ddp", "ddp_spawn"):
            strategy = f"{strategy}_find_unused_parameters_true"
        with quiet_lightning():
            trainer = L.Trainer(max_epochs=remaining, accelerator=accelerator, devices=devices, strategy=strategy,
                                num_nodes=int(cfg.num_nodes), logger=logger, callbacks=callbacks,
                                enable_checkpointing=ck_path is not None, enable_progress_bar=bool(cfg.progress),
                                enable_model_summary=False, num_sanity_val_steps=0, inference_mode=False,
                                gradient_clip_val=cfg.grad_clip, use_distributed_sampler=False,
                                log_every_n_steps=1, default_root_dir=str(cfg.log_dir or os.getcwd()))
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
        module.stopped_early = bool(es is not None and es.wait_count >= es.patience)
    if cfg.restore_best and module.best_state is not None:
        module.load_state_dict(module.best_state)
    module._pending = None
    return module
