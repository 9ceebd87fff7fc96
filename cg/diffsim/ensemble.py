"""Thermodynamic states and batches of simulations over them (reduced LJ units).

A :class:`State` is a (density, temperature) point with an optional target g(r), a loss weight,
a particle number, a number of independent replicas and, for mixtures, a composition (mole fractions
of the particle types; the target is then either the total g(r) of all particles seen as one type,
shape (n_bins,), or the partial g_ab(r), shape (n_types (n_types + 1) / 2, n_bins)). An :class:`Ensemble` simulates all
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
    interval) for fits that also match dynamics. ``composition``: mole fractions of particle types
    0, 1, ... (None: one type); with a 2-D ``target`` the partial RDFs (channels a <= b, see
    :func:`~cg.diffsim.observables.type_pairs`) are the targets.
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
    composition: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.composition is not None:
            x = np.asarray(self.composition, float)
            if x.ndim != 1 or len(x) < 1 or (x < 0).any() or x.sum() <= 0:
                raise InputError(f"state: composition must be non-negative mole fractions, got {self.composition}")
            self.composition = tuple(float(v) for v in x / x.sum())
        if not self.name:
            self.name = state_name(self.density, self.temperature, self.composition)
        if self.density <= 0 or self.temperature <= 0 or self.n_particles < 2 or self.replicas < 1:
            raise InputError(f"state {self.name}: need density > 0, temperature > 0, n_particles >= 2, "
                             f"replicas >= 1")


    @property
    def n_types(self) -> int:
        return 1 if self.composition is None else len(self.composition)

    def type_counts(self) -> np.ndarray:
        """Particles of each type (mole fractions rounded, summing to ``n_particles``)."""
        if self.composition is None:
            return np.array([self.n_particles])
        x = np.asarray(self.composition)
        n = np.floor(x * self.n_particles).astype(int)
        rest = np.argsort(-(x * self.n_particles - n))[: self.n_particles - n.sum()]
        n[rest] += 1
        return n


def state_name(density: float, temperature: float, composition=None) -> str:
    """Canonical key such as ``rho0.3_T1.2`` (``rho0.3_T1.2_x0.5`` for a mixture: mole fraction of type 0)."""
    name = f"rho{density:g}_T{temperature:g}"
    if composition is not None and len(composition) > 1:
        name += "_x" + "_".join(f"{v:.3g}" for v in composition[:-1])
    return name


def _table_for(table, idx: list[int]):
    """(table, table_index) for the systems ``idx`` (state of each): a shared table, or a list of per-state
    tables stacked into a table set with one block per state present."""
    if not isinstance(table, (list, tuple)):
        return table, None
    uniq = sorted(set(idx))
    if all(table[k] is table[uniq[0]] for k in uniq):
        return table[uniq[0]], None
    from .md import PairTable

    pos = {k: n for n, k in enumerate(uniq)}
    return PairTable.stack([table[k] for k in uniq]), [pos[i] for i in idx]


class Ensemble:
    """All replicas of several states, simulated together.

    Parameters
    ----------
    states : the states; replicas and particle numbers are taken from each.
    rdf : the RDF estimator (its reach sets the neighbour-list cutoff together with ``r_cut``).
    r_cut : potential cutoff.
    dt, friction, skin, seed, device, dtype, thermostat : passed to :class:`~cg.diffsim.md.Simulation`.
    n_types : particle types (default: the most of any state's composition).

    Every potential argument (``table``) is a :class:`~cg.diffsim.md.PairTable` shared by all states
    (for mixtures a set of n_types^2 type-pair rows) or a list with one table per state (state-dependent
    potentials such as u(r; T)).
    """

    def __init__(self, states: list[State], rdf: RDF, r_cut: float = 2.5, dt: float = 0.005, friction: float = 1.0,
                 skin: float = 0.4, seed: int = 0, device=None, dtype: torch.dtype = torch.float64,
                 thermostat: str = "langevin", n_types: int | None = None):
        if not states:
            raise InputError("Ensemble: no states given")
        self.states, self.rdf = list(states), rdf
        self.n_types = int(n_types) if n_types else max(s.n_types for s in states)
        self.groups: list[tuple[Simulation, list[int]]] = []  # (simulation, state index of each system)
        cutoff = max(r_cut, rdf.reach)
        for k, n in enumerate(sorted({s.n_particles for s in states})):
            idx = [i for i, s in enumerate(states) for _ in range(s.replicas) if s.n_particles == n]
            rng = np.random.default_rng(seed + 1000 * k + 7)
            types = np.stack([rng.permutation(np.repeat(np.arange(states[i].n_types), states[i].type_counts()))
                              for i in idx])
            sim = Simulation(n, [states[i].density for i in idx], [states[i].temperature for i in idx], cutoff,
                             dt=dt, friction=friction, skin=skin, seed=seed + 1000 * k, device=device, dtype=dtype,
                             thermostat=thermostat, types=types, n_types=self.n_types)
            self.groups.append((sim, idx))

    def detach(self) -> None:
        for sim, _ in self.groups:
            sim.detach()

    def equilibrate(self, table: PairTable, n_steps: int) -> None:
        """Advance without gradients or observations."""
        for sim, idx in self.groups:
            tab, ti = _table_for(table, idx)
            sim.run(tab, n_steps, grad=False, table_index=ti)

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
        (velocities sampled every ``observe_every`` steps; lag k is k * ``observe_every`` steps)."""
        out = self.run_all(table, n_steps, observe_every, grad, vacf_lag)
        return out["g"], out["vacf"]

    def run_all(self, table, n_steps: int, observe_every: int = 10, grad: bool = False, vacf_lag: int = 0,
                partial: bool | None = None) -> dict[str, torch.Tensor | None]:
        """Run ``n_steps``; per state: ``g`` (S, n_bins) total g(r), ``g_partial`` (S, channels, n_bins)
        partial RDFs (when ``partial``, default: with more than one type, else None) and ``vacf``
        (S, vacf_lag) or None, averaged over frames and replicas."""
        if n_steps < observe_every:
            raise InputError(f"run_rdf: n_steps={n_steps} < observe_every={observe_every}: nothing observed")
        if vacf_lag > n_steps // observe_every:
            raise InputError(f"vacf_lag={vacf_lag} exceeds the {n_steps // observe_every} frames of the window")
        if isinstance(table, (list, tuple)) and len(table) != len(self.states):
            raise InputError(f"{len(table)} tables for {len(self.states)} states")
        from .observables import vacf

        partial = self.n_types > 1 if partial is None else bool(partial)
        S = len(self.states)
        sums: dict[str, torch.Tensor | None] = {"g": None, "g_partial": None, "vacf": None}
        counts = torch.zeros(S, dtype=torch.float64)

        def add(key, val, owner):
            part = torch.zeros((S,) + tuple(val.shape[1:]), dtype=val.dtype, device=val.device).index_add(0, owner, val)
            sums[key] = part if sums[key] is None else sums[key] + part.to(sums[key].device)

        for sim, idx in self.groups:
            acc, accp, vel = [], [], []
            flat_types = sim.types.reshape(-1)

            def obs(s, x, v, pd, sim=sim, acc=acc, accp=accp, vel=vel, flat_types=flat_types):
                acc.append(self.rdf.from_pairs(pd, sim.volume))
                if partial:
                    accp.append(self.rdf.partial_from_pairs(pd, sim.volume, flat_types, self.n_types))
                if vacf_lag:
                    vel.append(v)

            tab, ti = _table_for(table, idx)
            sim.run(tab, n_steps, observe=obs, observe_every=observe_every, grad=grad, table_index=ti)
            g = torch.stack(acc).mean(0)  # (B, n_bins)
            owner = torch.tensor(idx, device=g.device)
            add("g", g, owner)
            if partial:
                add("g_partial", torch.stack(accp).mean(0), owner)
            if vacf_lag:
                add("vacf", vacf(torch.stack(vel), vacf_lag), owner)
            counts += torch.bincount(torch.tensor(idx), minlength=S).double()
        out = {}
        for k, v in sums.items():
            if v is None:
                out[k] = None
            else:
                n = counts.to(v.device, v.dtype)
                out[k] = v / n.reshape((S,) + (1,) * (v.dim() - 1))
        return out


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
    out = sample_all(table, states, rdf, n_equil, n_prod, observe_every, r_cut, dt, friction, seed, device, progress,
                     chunk, vacf_lag, partial=False)
    return out["g"], out["vacf"]


def sample_all(table, states: list[State], rdf: RDF, n_equil: int = 1000, n_prod: int = 4000,
               observe_every: int = 10, r_cut: float = 2.5, dt: float = 0.005, friction: float = 1.0,
               seed: int = 0, device=None, progress: bool = False, chunk: int = 500, vacf_lag: int = 0,
               partial: bool | None = None, n_types: int | None = None) -> dict[str, np.ndarray | None]:
    """Fresh simulations of ``states`` (no gradients): ``{"g": (S, n_bins), "g_partial": (S, channels,
    n_bins) or None, "vacf": (S, vacf_lag) or None}``. ``table``: one table (set) or one per state."""
    from tqdm.auto import tqdm

    ens = Ensemble(states, rdf, r_cut=r_cut, dt=dt, friction=friction, seed=seed, device=device, n_types=n_types)
    with torch.no_grad():
        ens.equilibrate(table, n_equil)
        parts, weights = [], []
        left = n_prod
        with tqdm(total=n_prod, desc="sampling g(r)", disable=not progress, mininterval=1.0) as bar:
            while left > 0:
                n = min(chunk, left)
                n -= n % observe_every
                if n <= 0 or (vacf_lag and n // observe_every < vacf_lag):
                    break
                parts.append(ens.run_all(table, n, observe_every, vacf_lag=vacf_lag, partial=partial))
                weights.append(n)
                left -= n
                bar.update(n)
    if not parts:
        raise InputError(f"sampling: n_prod={n_prod} too short for observe_every={observe_every}, vacf_lag={vacf_lag}")
    w = np.asarray(weights, float)
    w = w / w.sum()
    out = {}
    for k in parts[0]:
        if parts[0][k] is None:
            out[k] = None
        else:
            out[k] = sum(wi * p[k].cpu().numpy() for wi, p in zip(w, parts))
    return out


def save_targets(path, rdf: RDF, states: list[State], g: np.ndarray, vacf: np.ndarray | None = None) -> None:
    """Write target RDFs of ``states`` with the RDF grid (and optional VACFs (S, lag)) to an ``.npz`` file
    (atomic). ``g`` is (S, n_bins) (total g(r)) or (S, channels, n_bins) (partial RDFs of mixtures; every
    state then needs a ``composition`` with the same number of types)."""
    from forcefield.fileio import save_npz

    g = np.asarray(g, float)
    nt = max(s.n_types for s in states)
    nch = nt * (nt + 1) // 2
    if g.shape not in ((len(states), rdf.n_bins), (len(states), nch, rdf.n_bins)):
        raise InputError(f"{path}: g must have shape ({len(states)}, {rdf.n_bins}) or ({len(states)}, {nch}, "
                         f"{rdf.n_bins}), got {g.shape}")
    extra = {} if vacf is None else {"vacf": np.asarray(vacf, float)}
    if nt > 1:
        comp = np.zeros((len(states), nt))
        for i, s in enumerate(states):
            comp[i, :s.n_types] = s.composition if s.composition is not None else (1.0,)
        extra["composition"] = comp
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
    g = np.asarray(d["g"], float)
    if g.ndim == 1:
        g = g[None]
    S = len(np.atleast_1d(d["density"]))
    if g.shape[0] != S or g.shape[-1] != rdf.n_bins or g.ndim > 3:
        raise InputError(f"{path}: g has shape {g.shape}, expected ({S}, {rdf.n_bins}) or ({S}, channels, "
                         f"{rdf.n_bins})")
    comp = np.atleast_2d(d["composition"]) if "composition" in d else None
    if g.ndim == 3 and comp is None:
        raise InputError(f"{path}: partial RDF targets need a 'composition' array")
    c = np.atleast_2d(d["vacf"]) if "vacf" in d else None
    if c is not None and len(c) != len(g):
        raise InputError(f"{path}: vacf has {len(c)} rows for {len(g)} states")
    states = [State(float(rho), float(T), target=g[i], n_particles=int(n), target_vacf=None if c is None else c[i],
                    composition=None if comp is None else tuple(comp[i]))
              for i, (rho, T, n) in enumerate(zip(np.atleast_1d(d["density"]), np.atleast_1d(d["temperature"]),
                                                  np.atleast_1d(d["n_particles"])))]
    return rdf, states
