"""The CG-MD recipe, written once: (CG potential, starting frames, config) → CG trajectory.

Replicas start from frames drawn from a pool (mapped reference frames), run batched BAOAB Langevin MD
(:func:`cg.md.run_cg_md`) and are stopped by the stability rule of :mod:`forcefield.stability` (thresholds
from the reference when one is given). :class:`CGTrajectory` is the one file format for CG trajectories
(``.npz``: ``R`` (saved, replicas, beads, 3) Å with ``n_valid`` frames per replica, bonds, names, masses,
``dt_ps``); the CLI (``cgwb cg simulate``), the pipeline and the benchmarks write and read it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from forcefield.config import Config
from forcefield.errors import InputError
from forcefield.fileio import load_npz, save_npz
from forcefield.stability import FU_THRESHOLD, bond_thresholds

from .md import CGRun, run_cg_md
from .potential import CGPotential


class SimulationConfig(Config):
    """Settings of :func:`simulate_cg`.

    n_steps : steps per replica. stop : stop replicas by the stability rule; its thresholds are
    ``max(stop_base, stop_widen × largest deviation in the reference)`` per bond (Å). compile : compile the
    whole MD step with ``torch.compile`` (CUDA graphs on GPU; pays off for long runs, the compilation takes
    tens of seconds on CPU). repulsion_cutoff : Å, Verlet neighbour lists for the prior's repulsion (large
    bead counts).
    """

    replicas: int = Field(16, gt=0)
    n_steps: int = Field(10000, gt=0)
    timestep_fs: float = Field(2.0, gt=0)
    save_every: int = Field(50, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    temperature: float | None = Field(None, gt=0)
    stop: bool = True
    stop_base: float = Field(FU_THRESHOLD, gt=0)
    stop_widen: float = Field(1.5, ge=0)
    compile: bool = False
    repulsion_cutoff: float | None = Field(None, gt=0)


@dataclass
class CGTrajectory:
    """CG MD frames of every replica: ``R`` (saved, replicas, n, 3) Å, ``n_valid`` (replicas,) frames kept."""

    R: np.ndarray
    n_valid: np.ndarray
    dt_ps: float
    names: list[str]
    bonds: np.ndarray
    masses: np.ndarray
    E: np.ndarray | None = None
    report: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, float] = field(default_factory=dict)

    @property
    def n_replicas(self) -> int:
        return int(self.R.shape[1])

    def replica(self, b: int) -> np.ndarray:
        """Valid frames (n_valid[b], n, 3) of replica ``b``."""
        return self.R[: int(self.n_valid[b]), b]

    def runs(self) -> list[np.ndarray]:
        return [self.replica(b) for b in range(self.n_replicas)]

    def frames(self) -> np.ndarray:
        """Valid frames of all replicas, concatenated replica by replica: (frames, n, 3)."""
        return np.concatenate(self.runs(), 0)

    @property
    def stable_fraction(self) -> float:
        if not self.report:
            return float(np.mean(self.n_valid == self.R.shape[0]))
        return float(np.mean([r["stable"] for r in self.report]))

    @classmethod
    def from_run(cls, run: CGRun) -> "CGTrajectory":
        t = run.traj
        return cls(R=np.nan_to_num(t.R), n_valid=np.asarray(t.n_valid), dt_ps=t.save_every * run.dt_fs / 1000.0,
                   names=list(run.names), bonds=np.asarray(run.bonds), masses=np.asarray(run.masses),
                   E=np.nan_to_num(t.E) if t.E is not None else None, report=run.report, speed=run.speed())

    def save(self, path: str | os.PathLike) -> Path:
        arrays = dict(R=self.R, n_valid=self.n_valid, dt_ps=np.array(self.dt_ps), names=np.array(self.names),
                      bonds=np.asarray(self.bonds, dtype=np.int64).reshape(-1, 2), masses=self.masses,
                      stable=np.array([bool(r["stable"]) for r in self.report]) if self.report
                      else self.n_valid == self.R.shape[0])
        if self.E is not None:
            arrays["E"] = self.E
        save_npz(path, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CGTrajectory":
        d = load_npz(path)
        for k in ("R", "n_valid", "dt_ps", "names", "bonds", "masses"):
            if k not in d:
                raise InputError(f"{path}: not a CG trajectory (no field {k!r}; written by `cgwb cg simulate`?)")
        rep = [{"replica": b, "stable": bool(s)} for b, s in enumerate(d["stable"])] if "stable" in d else []
        return cls(R=np.asarray(d["R"], dtype=float), n_valid=np.asarray(d["n_valid"], dtype=int),
                   dt_ps=float(d["dt_ps"]), names=[str(s) for s in d["names"]], bonds=np.asarray(d["bonds"], dtype=int),
                   masses=np.asarray(d["masses"], dtype=float), E=d.get("E"), report=rep)


def simulate_cg(potential: CGPotential, starts: np.ndarray, config: SimulationConfig | None = None, *,
                reference: np.ndarray | None = None, device: str | torch.device = "cpu", seed: int = 0,
                progress: bool = True, masses: np.ndarray | None = None) -> CGTrajectory:
    """Run ``config.replicas`` CG replicas from frames drawn (seeded) out of ``starts`` (frames, n, 3) Å.

    ``reference`` (mapped reference frames, Å) sets the stability rule's reference bond lengths and
    thresholds; without it the prior's bond lengths and ``stop_base`` are used. ``masses`` (amu) replace the
    potential's bead masses in the dynamics (see :func:`cg.md.run_cg_md`).
    """
    cfg = config or SimulationConfig()
    starts = np.asarray(starts, dtype=float)
    if starts.ndim == 2:
        starts = starts[None]
    if len(starts) == 0:
        raise InputError("no starting frames for CG MD")
    bonds = potential.bonds.cpu().numpy()
    r0, thr = None, None
    if cfg.stop and len(bonds):
        if reference is not None:
            r0, thr = bond_thresholds(np.asarray(reference, dtype=float), bonds, cfg.stop_base, cfg.stop_widen)
        else:
            thr = cfg.stop_base
    rng = np.random.default_rng(seed + 3)
    idx = rng.choice(len(starts), cfg.replicas, replace=len(starts) < cfg.replicas)
    run = run_cg_md(potential, starts[idx], cfg.n_steps, dt_fs=cfg.timestep_fs, save_every=cfg.save_every,
                    temperature=cfg.temperature, friction_per_ps=cfg.friction_per_ps,
                    max_bond_deviation=thr if cfg.stop else None, reference_bond_lengths=r0, device=device,
                    seed=seed, progress=progress, compile=cfg.compile, repulsion_cutoff=cfg.repulsion_cutoff,
                    masses=masses)
    out = CGTrajectory.from_run(run)
    out.speed = {**run.speed(), "wall_s": run.wall_seconds}
    return out
