"""CG molecular dynamics with a :class:`cg.potential.CGPotential`: BAOAB Langevin, many replicas at once.

Uses the shared integrator :func:`forcefield.langevin.simulate` (any torch device). A replica is stopped,
keeping its earlier frames, when its positions or forces stop being finite or when any CG bond deviates
by more than ``max_bond_deviation`` (Å) from its reference length (the stability criterion of Fu et al.,
TMLR 2023, applied on the fly). Trajectories are written through MDAnalysis (PDB topology with the bead
bonds + DCD/XTC/TRR/...).

Units: Å, fs, K, amu, kcal/mol.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forcefield import stability
from forcefield.errors import InputError
from forcefield.langevin import Trajectory, simulate

from .potential import CGPotential


@dataclass
class CGRun:
    """Result of :func:`run_cg_md`.

    Attributes
    ----------
    traj : the shared :class:`forcefield.langevin.Trajectory` (R (n_saved, B, n, 3), n_valid, stopped, ...).
    report : one dict per replica: ``replica``, ``stable``, ``frames``, ``stopped_step``, ``stopped_ps``, ``reason``.
    wall_seconds : wall time of the integration (compiling included, when asked for).
    n_steps, dt_fs : requested steps per replica and time step.
    engine : ``"fast"`` (analytic prior/network forces), ``"autograd"``, or either with ``"+compile"``.
    """

    traj: Trajectory
    report: list[dict[str, Any]]
    wall_seconds: float
    n_steps: int
    dt_fs: float
    names: list[str] = field(default_factory=list)
    bonds: np.ndarray | None = None
    masses: np.ndarray | None = None
    engine: str = "fast"

    @property
    def n_replicas(self) -> int:
        return self.traj.R.shape[1]

    @property
    def all_stable(self) -> bool:
        return all(r["stable"] for r in self.report)

    @property
    def steps_done(self) -> int:
        """Replica-steps actually integrated (stopped replicas count up to their stop)."""
        return int(sum(r["stopped_step"] if not r["stable"] else self.n_steps for r in self.report))

    @property
    def ns_per_day(self) -> float:
        """Simulated ns per day of wall time, summed over replicas (stopped replicas count up to their stop)."""
        return self.steps_done * self.dt_fs * 1e-6 / self.wall_seconds * 86400.0

    @property
    def ns_per_day_per_replica(self) -> float:
        """:attr:`ns_per_day` divided by the number of replicas."""
        return self.ns_per_day / self.n_replicas

    def speed(self) -> dict[str, float]:
        """Bead-steps per second, replica-steps per second, and simulated ns per day (all replicas together)."""
        n = self.traj.R.shape[2]
        steps = self.steps_done
        return {"bead_steps_per_s": steps * n / self.wall_seconds, "steps_per_s": steps / self.wall_seconds,
                "ns_per_day": self.ns_per_day, "ns_per_day_per_replica": self.ns_per_day_per_replica}

    def frames(self, replicas: list[int] | None = None) -> np.ndarray:
        """Valid frames of the chosen replicas (default all), concatenated: (frames, n, 3)."""
        reps = range(self.n_replicas) if replicas is None else replicas
        return np.concatenate([self.traj.replica(b)[0] for b in reps], 0)

    def summary(self) -> str:
        sp = self.speed()
        bad = [r for r in self.report if not r["stable"]]
        s = (f"{self.n_replicas} replicas x {self.n_steps} steps of {self.dt_fs:g} fs "
             f"({self.n_steps * self.dt_fs / 1000:.1f} ps each) in {self.wall_seconds:.1f} s: "
             f"{sp['bead_steps_per_s']:.3g} bead-steps/s, {sp['ns_per_day']:.1f} ns/day; "
             f"{self.n_replicas - len(bad)}/{self.n_replicas} stable")
        for r in bad:
            s += f"\n  replica {r['replica']} stopped at step {r['stopped_step']} ({r['stopped_ps']:.2f} ps): {r['reason']}"
        return s


def bond_check(bonds: np.ndarray, r_ref: np.ndarray, max_dev: float | np.ndarray):
    """Instability test for :func:`forcefield.langevin.simulate`: True where any bond deviates > max_dev Å
    (a number, or one threshold per bond)."""
    b = torch.as_tensor(np.asarray(bonds, dtype=int).reshape(-1, 2))
    r0 = torch.as_tensor(np.asarray(r_ref, dtype=float))
    thr = torch.as_tensor(np.broadcast_to(np.asarray(max_dev, dtype=float), r0.shape).copy())

    def check(x: torch.Tensor) -> torch.Tensor:
        if len(b) == 0:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        bb, rr, tt = b.to(x.device), r0.to(x.device, x.dtype), thr.to(x.device, x.dtype)
        d = (x[:, bb[:, 1]] - x[:, bb[:, 0]]).norm(dim=-1)
        return ((d - rr).abs() > tt).any(-1)

    return check


class RepulsionNeighbours:
    """Verlet lists of the prior's repulsive pairs for large bead counts, one per replica: pairs within
    ``cutoff + skin`` Å, rebuilt when some bead has moved more than ``skin / 2`` since the last build (then
    no pair can have crossed the cutoff unseen). Pairs beyond ``cutoff`` contribute nothing (see
    :func:`cg.analytic_forces.prior_energy_forces`); a build costs one pass over all pairs (in chunks of
    replicas, to bound memory).
    """

    def __init__(self, priors: Any, cutoff: float, skin: float = 2.0) -> None:
        self.priors, self.cutoff, self.skin = priors, float(cutoff), float(skin)
        self.x_ref: torch.Tensor | None = None
        self.pairs = self.sigma = None
        self.builds = 0

    def current(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a replica gone non-finite (to be stopped by the engine) must not block the rebuilds of the others
        if self.x_ref is None or self.x_ref.shape != x.shape or \
                torch.nan_to_num(torch.linalg.vector_norm(x - self.x_ref, dim=-1), nan=0.0).max() > 0.5 * self.skin:
            allp = self.priors.rep_idx
            chunk = max(1, int(2e7 // max(1, len(allp))))
            rows = []
            for s in range(0, x.shape[0], chunk):
                d = torch.linalg.vector_norm(x[s:s + chunk, allp[:, 1]] - x[s:s + chunk, allp[:, 0]], dim=-1)
                b, k = torch.nonzero(d < self.cutoff + self.skin, as_tuple=True)
                rows.append((b + s, k))
            b, k = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
            self.pairs = torch.stack([b, allp[k, 0], allp[k, 1]], 1)  # (replica, i, j)
            self.sigma = self.priors.rep_sigma[k]
            self.x_ref = x.detach().clone()
            self.builds += 1
        return self.pairs, self.sigma


def _fast_force_fn(potential: CGPotential, dtype: torch.dtype, neighbours: RepulsionNeighbours | None):
    """positions -> (E, F) with the fast path: :class:`cg.analytic_forces.FusedForces` for priors (+ FeatureNet),
    the prior's repulsion through ``neighbours`` when given, else :meth:`CGPotential.fast_energy_forces`."""
    from .analytic_forces import FusedForces, prior_energy_forces

    if neighbours is None:
        fused = FusedForces.for_potential(potential)
        if fused is None:
            return potential.force_fn(dtype, fast=True)

        def fused_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            E, F = fused(x.to(dtype))
            return E.to(x.dtype), F.to(x.dtype)
        return fused_fn
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xd = x.to(dtype)
        E, F = prior_energy_forces(potential.priors, xd, rep=neighbours.current(xd), rep_cutoff=neighbours.cutoff)
        if potential.net is not None:
            En, Fn = potential.net_energy_forces(xd)
            E, F = E + En, F + Fn
        return E.to(x.dtype), F.to(x.dtype)
    return fn


def run_cg_md(potential: CGPotential, x0: np.ndarray | torch.Tensor, n_steps: int, *, dt_fs: float = 2.0,
              save_every: int = 50, temperature: float | None = None, friction_per_ps: float = 1.0,
              max_bond_deviation: float | np.ndarray | None = stability.FU_THRESHOLD, reference_bond_lengths: np.ndarray | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
              progress: bool = True, fast: bool = True, compile: bool = False,
              repulsion_cutoff: float | None = None, masses: np.ndarray | None = None) -> CGRun:
    """Langevin (BAOAB) MD of B replicas of the CG system from x0 (B, n, 3) or (n, 3) Å.

    Parameters
    ----------
    potential : the CG potential (its masses, bonds and, by default, temperature are used).
    n_steps, dt_fs, save_every : steps per replica, time step (fs), steps between saved frames.
    friction_per_ps : Langevin friction (1/ps).
    max_bond_deviation : Å (one number or one per bond; Fu et al.'s 0.5 Å by default, see
        :mod:`forcefield.stability`); a replica stops when a CG bond deviates more than
        this from its reference length
        (``reference_bond_lengths``, default the prior's r0, else the mean over x0). ``None`` disables the check
        (non-finite values still stop a replica).
    dtype : positions/force precision during MD (float32 by default; the network is float32 anyway).
    fast : forces from :meth:`CGPotential.fast_energy_forces` (analytic priors and FeatureNet, no autograd
        graph; same values as autograd to float rounding); ``False``: autograd through the whole potential.
    compile : fuse each step with ``torch.compile`` (:func:`forcefield.langevin.compile_step`; CUDA graphs on
        a GPU). Pays off only for long runs: compiling takes from tens of seconds to minutes on a CPU. Falls
        back on the eager step, with a warning, where compiling fails.
    repulsion_cutoff : Å; with ``fast``, the prior's repulsive pairs go through a Verlet neighbour list
        (:class:`RepulsionNeighbours`) and pairs beyond the cutoff are dropped: for large bead counts, where
        the all-pairs repulsion dominates. None: every pair (exact).
    masses : (n,) bead masses (amu) for the dynamics instead of the potential's (e.g.
        :meth:`cg.mapping.Mapping.represented_masses`): heavier beads allow larger time steps; the sampled
        Boltzmann distribution does not depend on them.
    """
    x = torch.as_tensor(np.asarray(x0) if not torch.is_tensor(x0) else x0)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[1:] != (potential.n_beads, 3):
        raise InputError(f"starting positions must be (replicas, {potential.n_beads}, 3), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("starting positions contain non-finite values")
    x = x.to(device=device, dtype=dtype)
    potential = potential.to(device).eval()
    m = potential.masses if masses is None else torch.as_tensor(np.asarray(masses, dtype=float))
    if m.shape != (potential.n_beads,) or not bool(torch.isfinite(m).all()) or bool((m <= 0).any()):
        raise InputError(f"bead masses must be {potential.n_beads} positive numbers (amu), got {m.tolist()}")
    was_training = [(p, p.requires_grad) for p in potential.parameters()]
    for p, _ in was_training:  # no parameter gradients during MD (restored at the end)
        p.requires_grad_(False)
    bonds = potential.bonds.cpu().numpy()
    check = None
    if max_bond_deviation is not None and len(bonds):
        if reference_bond_lengths is None:
            if potential.priors is not None and len(potential.priors.bond_idx) == len(bonds):
                reference_bond_lengths = potential.priors.bond_r0.cpu().numpy()
            else:
                reference_bond_lengths = stability.reference_bond_lengths(x.double().cpu().numpy(), bonds)
        check = bond_check(bonds, reference_bond_lengths, max_bond_deviation)
    T = potential.temperature if temperature is None else float(temperature)
    t0 = time.perf_counter()
    try:
        nl = None
        if fast and repulsion_cutoff is not None and potential.priors is not None and len(potential.priors.rep_idx):
            nl = RepulsionNeighbours(potential.priors, repulsion_cutoff)
        fn = _fast_force_fn(potential, dtype, nl) if fast else potential.force_fn(dtype, fast=False)
        traj = simulate(fn, x, m.to(device), n_steps,
                        save_every=save_every, dt_fs=dt_fs, temperature=T, friction_per_ps=friction_per_ps, seed=seed,
                        check_fn=check, progress=progress, desc="CG MD", compile=compile)
    finally:
        for p, rg in was_training:
            p.requires_grad_(rg)
    wall = time.perf_counter() - t0
    stops = {b: (step, why) for b, step, why in traj.stopped}
    report = []
    for b in range(x.shape[0]):
        st = stops.get(b)
        report.append({"replica": b, "stable": st is None, "frames": int(traj.n_valid[b]),
                       "stopped_step": None if st is None else int(st[0]),
                       "stopped_ps": None if st is None else st[0] * dt_fs / 1000.0,
                       "reason": None if st is None else st[1]})
    return CGRun(traj=traj, report=report, wall_seconds=wall, n_steps=n_steps, dt_fs=dt_fs, names=potential.names,
                 bonds=bonds, masses=m.cpu().numpy(),
                 engine=("fast" if fast else "autograd") + ("+compile" if compile else ""))


# ----------------------------------------------------------------------------- MDAnalysis output
def cg_universe(R: np.ndarray, names: list[str], bonds: np.ndarray | None = None, masses: np.ndarray | None = None,
                dt_ps: float = 1.0) -> Any:
    """An MDAnalysis Universe of bead trajectories R (frames, n, 3) Å (one residue ``CG``; names/types = bead names)."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    R = np.asarray(R, dtype=np.float32)
    if R.ndim == 2:
        R = R[None]
    n = R.shape[1]
    if len(names) != n:
        raise InputError(f"{len(names)} bead names for {n} beads")
    u = mda.Universe.empty(n, n_residues=1, atom_resindex=np.zeros(n, dtype=int), trajectory=False)
    u.add_TopologyAttr("names", [str(s)[:4] for s in names])
    u.add_TopologyAttr("types", [str(s) for s in names])
    u.add_TopologyAttr("resnames", ["CG"])
    u.add_TopologyAttr("resids", [1])
    u.add_TopologyAttr("masses", np.ones(n) if masses is None else np.asarray(masses, dtype=float))
    if bonds is not None and len(bonds):
        u.add_TopologyAttr("bonds", [tuple(map(int, b)) for b in np.asarray(bonds).reshape(-1, 2)])
    u.load_new(R, format=MemoryReader, order="fac", dt=dt_ps)
    return u


def write_cg_trajectory(path: str | os.PathLike, R: np.ndarray, names: list[str], bonds: np.ndarray | None = None,
                        masses: np.ndarray | None = None, dt_ps: float = 1.0) -> Path:
    """Write bead frames R (frames, n, 3) with MDAnalysis: ``path`` (.dcd/.xtc/.trr/.pdb) plus a PDB topology
    beside trajectory formats. Atomic writes."""
    from forcefield.universe import write_universe

    return write_universe(cg_universe(R, names, bonds, masses, dt_ps), path)


def write_run(run: CGRun, path: str | os.PathLike, replica: int | None = None) -> list[Path]:
    """Write each replica's valid frames (or only ``replica``) to ``stem_r{k}.ext`` (with a PDB beside it)."""
    path = Path(path)
    reps = range(run.n_replicas) if replica is None else [replica]
    out = []
    dt_ps = run.traj.save_every * run.dt_fs / 1000.0
    for b in reps:
        R = run.traj.replica(b)[0]
        if len(R) == 0:
            continue
        p = path if replica is not None or run.n_replicas == 1 else path.with_name(f"{path.stem}_r{b}{path.suffix}")
        out.append(write_cg_trajectory(p, R, run.names, run.bonds, run.masses, dt_ps))
    return out
