"""Thermodynamic states and batches of simulations over them (reduced LJ units).

A :class:`State` is a (density, temperature) point with an optional target g(r), a loss weight,
a particle number and a number of independent replicas. An :class:`Ensemble` simulates all
replicas of all states at once (one batched :class:`~cg.diffsim.md.Simulation` per particle number)
and averages the RDF per state; it is shared by DiffSim, IBI, target generation and evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from forcefield.errors import InputError

from .md import PairTable, Simulation
from .observables import RDF


@dataclass
class State:
    """A thermodynamic state: reduced ``density`` and ``temperature``.

    ``target`` is g(r) on the fitting RDF grid (None for plain simulation); ``weight`` its loss weight;
    ``target_vacf`` an optional normalised velocity autocorrelation (lags in units of the observation
    interval) for fits that also match dynamics.
    """

    density: float
    temperature: float
    target: np.ndarray | None = None
    weight: float = 1.0
    target_vacf: np.ndarray | None = None
    n_particles: int = 256
    replicas: int = 1
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            self.name = state_name(self.density, self.temperature)
        if self.density <= 0 or self.temperature <= 0 or self.n_particles < 2 or self.replicas < 1:
            raise InputError(f"state {self.name}: need density > 0, temperature > 0, n_particles >= 2, "
                             f"replicas >= 1")


def state_name(density: float, temperature: float) -> str:
    """Canonical key such as ``rho0.3_T1.2``."""
    return f"rho{density:g}_T{temperature:g}"


class Ensemble:
    """All replicas of several states, simulated together.

    Parameters
    ----------
    states : the states; replicas and particle numbers are taken from each.
    rdf : the RDF estimator (its reach sets the neighbour-list cutoff together with ``r_cut``).
    r_cut : potential cutoff.
    dt, friction, skin, seed, device, dtype, thermostat : passed to :class:`~cg.diffsim.md.Simulation`.
    """

    def __init__(self, states: list[State], rdf: RDF, r_cut: float = 2.5, dt: float = 0.005, friction: float = 1.0,
                 skin: float = 0.4, seed: int = 0, device=None, dtype: torch.dtype = torch.float64,
                 thermostat: str = "langevin"):
        if not states:
            raise InputError("Ensemble: no states given")
        self.states, self.rdf = list(states), rdf
        self.groups: list[tuple[Simulation, list[int]]] = []  # (simulation, state index of each system)
        cutoff = max(r_cut, rdf.reach)
        for k, n in enumerate(sorted({s.n_particles for s in states})):
            idx = [i for i, s in enumerate(states) for _ in range(s.replicas) if s.n_particles == n]
            sim = Simulation(n, [states[i].density for i in idx], [states[i].temperature for i in idx], cutoff,
                             dt=dt, friction=friction, skin=skin, seed=seed + 1000 * k, device=device, dtype=dtype,
                             thermostat=thermostat)
            self.groups.append((sim, idx))

    def detach(self) -> None:
        for sim, _ in self.groups:
            sim.detach()

    def equilibrate(self, table: PairTable, n_steps: int) -> None:
        """Advance without gradients or observations."""
        for sim, _ in self.groups:
            sim.run(table, n_steps, grad=False)

    def run_rdf(self, table: PairTable, n_steps: int, observe_every: int = 10, grad: bool = False
                ) -> torch.Tensor:
        """Run ``n_steps`` and return g(r) per state (S, n_bins), averaged over frames and replicas.

        With ``grad`` the result is differentiable with respect to the table (truncated
        backpropagation through this window; call :meth:`detach` before the next window).
        """
        return self.run_observables(table, n_steps, observe_every, grad)[0]

    def run_observables(self, table: PairTable, n_steps: int, observe_every: int = 10, grad: bool = False,
                        vacf_lag: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`run_rdf`, also returning the VACF per state (S, vacf_lag) when ``vacf_lag`` > 0
        (velocities sampled every ``observe_every`` steps; lag k is k * observe_every steps)."""
        if n_steps < observe_every:
            raise InputError(f"run_rdf: n_steps={n_steps} < observe_every={observe_every}: nothing observed")
        if vacf_lag > n_steps // observe_every:
            raise InputError(f"vacf_lag={vacf_lag} exceeds the {n_steps // observe_every} frames of the window")
        from .observables import vacf

        S = len(self.states)
        total, total_c = None, None
        counts = torch.zeros(S, dtype=torch.float64)
        for sim, idx in self.groups:
            acc, vel = [], []

            def obs(s, x, v, pd, sim=sim, acc=acc, vel=vel):
                acc.append(self.rdf.from_pairs(pd, sim.volume))
                if vacf_lag:
                    vel.append(v)

            sim.run(table, n_steps, observe=obs, observe_every=observe_every, grad=grad)
            g = torch.stack(acc).mean(0)  # (B, n_bins)
            owner = torch.tensor(idx, device=g.device)
            part = torch.zeros(S, g.shape[1], dtype=g.dtype, device=g.device).index_add(0, owner, g)
            total = part if total is None else total + part.to(total.device)
            if vacf_lag:
                c = vacf(torch.stack(vel), vacf_lag)
                part = torch.zeros(S, vacf_lag, dtype=c.dtype, device=c.device).index_add(0, owner, c)
                total_c = part if total_c is None else total_c + part.to(total_c.device)
            counts += torch.bincount(torch.tensor(idx), minlength=S).double()
        n = counts.to(total.device, total.dtype)[:, None]
        return total / n, (total_c / n if total_c is not None else None)


def sample_rdf(table: PairTable, states: list[State], rdf: RDF, n_equil: int = 1000, n_prod: int = 4000,
               observe_every: int = 10, r_cut: float = 2.5, dt: float = 0.005, friction: float = 1.0, seed: int = 0,
               device=None, progress: bool = False, chunk: int = 500) -> np.ndarray:
    """g(r) per state (S, n_bins) from fresh simulations with the potential ``table`` (no gradients)."""
    return sample_observables(table, states, rdf, n_equil, n_prod, observe_every, r_cut, dt, friction, seed, device,
                              progress, chunk)[0]


def sample_observables(table: PairTable, states: list[State], rdf: RDF, n_equil: int = 1000, n_prod: int = 4000,
                       observe_every: int = 10, r_cut: float = 2.5, dt: float = 0.005, friction: float = 1.0,
                       seed: int = 0, device=None, progress: bool = False, chunk: int = 500, vacf_lag: int = 0
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """(g(r) (S, n_bins), VACF (S, vacf_lag) or None) per state from fresh simulations, no gradients.

    The VACF is averaged over chunks of ``chunk`` steps (lag k = k * ``observe_every`` steps).
    """
    from tqdm.auto import tqdm

    ens = Ensemble(states, rdf, r_cut=r_cut, dt=dt, friction=friction, seed=seed, device=device)
    with torch.no_grad():
        ens.equilibrate(table, n_equil)
        parts, cparts, weights = [], [], []
        left = n_prod
        with tqdm(total=n_prod, desc="sampling g(r)", disable=not progress, mininterval=1.0) as bar:
            while left > 0:
                n = min(chunk, left)
                n -= n % observe_every
                if n <= 0 or (vacf_lag and n // observe_every < vacf_lag):
                    break
                g, c = ens.run_observables(table, n, observe_every, vacf_lag=vacf_lag)
                parts.append(g)
                cparts.append(c)
                weights.append(n)
                left -= n
                bar.update(n)
    if not parts:
        raise InputError(f"sampling: n_prod={n_prod} too short for observe_every={observe_every}, vacf_lag={vacf_lag}")
    w = torch.tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).to(parts[0].device)
    g = (torch.stack(parts) * w[:, None, None]).sum(0).cpu().numpy()
    c = (torch.stack(cparts) * w[:, None, None]).sum(0).cpu().numpy() if vacf_lag else None
    return g, c


def save_targets(path, rdf: RDF, states: list[State], g: np.ndarray, vacf: np.ndarray | None = None) -> None:
    """Write target RDFs ``g`` (S, n_bins) of ``states`` with the RDF grid (and optional VACFs (S, lag))
    to an ``.npz`` file (atomic)."""
    from forcefield.fileio import save_npz

    g = np.asarray(g, float)
    if g.shape != (len(states), rdf.n_bins):
        raise InputError(f"{path}: g must have shape ({len(states)}, {rdf.n_bins}), got {g.shape}")
    extra = {} if vacf is None else {"vacf": np.asarray(vacf, float)}
    save_npz(path, **extra, r=rdf.r, g=g, density=np.array([s.density for s in states]),
             temperature=np.array([s.temperature for s in states]),
             n_particles=np.array([s.n_particles for s in states]), r_max=np.array(rdf.r_max),
             n_bins=np.array(rdf.n_bins), rdf_sigma=np.array(rdf.sigma), units=np.array("reduced LJ"))


def load_targets(path) -> tuple[RDF, list[State]]:
    """Read a file written by :func:`save_targets`: the RDF estimator and the states with their targets."""
    from forcefield.fileio import load_npz

    d = load_npz(path)
    need = ("g", "density", "temperature", "n_particles", "r_max", "n_bins", "rdf_sigma")
    missing = [k for k in need if k not in d]
    if missing:
        raise InputError(f"{path}: not a diffsim target file (missing {', '.join(missing)}); "
                         f"make one with `cgwb diffsim target`")
    rdf = RDF(float(d["r_max"]), int(d["n_bins"]), float(d["rdf_sigma"]))
    g = np.atleast_2d(d["g"])
    if g.shape != (len(d["density"]), rdf.n_bins):
        raise InputError(f"{path}: g has shape {g.shape}, expected ({len(d['density'])}, {rdf.n_bins})")
    c = np.atleast_2d(d["vacf"]) if "vacf" in d else None
    if c is not None and len(c) != len(g):
        raise InputError(f"{path}: vacf has {len(c)} rows for {len(g)} states")
    states = [State(float(rho), float(T), target=g[i], n_particles=int(n), target_vacf=None if c is None else c[i])
              for i, (rho, T, n) in enumerate(zip(d["density"], d["temperature"], d["n_particles"]))]
    return rdf, states
