"""Iterative Boltzmann Inversion (IBI) with the :mod:`cg.diffsim` MD engine (reduced LJ units).

The potential is a table U(r_k) on the RDF bin centres. Start: the potential of mean force
U_0 = -kT ln g_target. Iteration n simulates every state with U_n (switched off smoothly between
``r_on`` and ``r_cut`` like every other potential here), measures g_n with the same smoothed RDF
estimator as the targets, and updates

    U_{n+1}(r) = U_n(r) + alpha * sum_s w_s kT_s ln(g_{n,s}(r) / g_s^target(r)) / sum_s w_s,

on bins where both RDFs exceed ``g_floor`` (the log ratio is clipped to +-``max_log_ratio``, the
update optionally smoothed by 1-2-1 passes). One state gives standard IBI; several states give the
multistate variant (weighted mean of the per-state updates). In the core, where the target g is
below ``g_floor``, U is continued linearly and steeply repulsive. The simulations continue from
one iteration to the next (``equil_steps`` of re-equilibration before each measurement).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from forcefield.errors import InputError

from .ensemble import Ensemble, State
from .observables import RDF
from .potentials import TabulatedPotential


@dataclass
class IBIResult:
    """Final table (knots ``r``, values ``u``), its potential, and per-iteration history."""

    r: np.ndarray
    u: np.ndarray
    potential: TabulatedPotential
    history: list[dict] = field(default_factory=list)
    tables: list[np.ndarray] = field(default_factory=list)


def _smooth(a: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        b = a.copy()
        b[1:-1] = 0.25 * a[:-2] + 0.5 * a[1:-1] + 0.25 * a[2:]
        a = b
    return a


def _extrapolate_core(r: np.ndarray, u: np.ndarray, k_valid: int, min_slope: float) -> np.ndarray:
    """Linear, repulsive continuation of u below bin ``k_valid``."""
    u = u.copy()
    slope = (u[k_valid + 1] - u[k_valid]) / (r[k_valid + 1] - r[k_valid])
    slope = min(slope, -abs(min_slope))
    u[:k_valid] = u[k_valid] + slope * (r[:k_valid] - r[k_valid])
    return u


def ibi(states: list[State], rdf: RDF, n_iter: int = 20, equil_steps: int = 300, prod_steps: int = 1500,
        observe_every: int = 10, alpha: float = 1.0, smooth: int = 1, g_floor: float = 1e-3,
        max_log_ratio: float = 1.0, r_cut: float = 2.5, r_on: float = 2.2, r_min: float = 0.5,
        dt: float = 0.005, friction: float = 1.0, seed: int = 0, device=None, progress: bool = True,
        u_init: np.ndarray | None = None, average_last: int = 0) -> IBIResult:
    """Run IBI on the targets of ``states`` (see the module docstring).

    Returns the table after the last update (what one would use after ``n_iter`` iterations), or, with
    ``average_last`` = k > 0, the mean of the last k tables (which damps the sampling noise the way
    DiffSim's weight averaging does); the history holds, per iteration, the g(r) MAE of the simulated
    table per state.
    """
    from tqdm.auto import tqdm

    for s in states:
        if s.target is None or len(s.target) != rdf.n_bins:
            raise InputError(f"state {s.name}: IBI needs a target g(r) with {rdf.n_bins} bins")
    keep = (rdf.r >= r_min) & (rdf.r < r_cut)
    r = rdf.r[keep]
    G = np.stack([s.target[keep] for s in states])
    kT = np.array([s.temperature for s in states])
    w = np.array([s.weight for s in states], float)
    w = w / w.sum()
    valid_t = (G > g_floor).all(0)
    if valid_t.sum() < 4:
        raise InputError("IBI: fewer than 4 bins where every target g(r) exceeds g_floor")
    k_valid = int(np.argmax(valid_t))
    if u_init is None:
        pmf = -kT[:, None] * np.log(np.maximum(G, g_floor))
        u = (w[:, None] * pmf).sum(0)
    else:
        u = np.asarray(u_init, float)[keep] if len(u_init) == rdf.n_bins else np.asarray(u_init, float)
    u = _extrapolate_core(r, u, k_valid, min_slope=10 * kT.max())
    ens = Ensemble(states, rdf, r_cut=r_cut, dt=dt, friction=friction, seed=seed, device=device)
    result = IBIResult(r=r, u=u, potential=None, history=[], tables=[u.copy()])  # type: ignore[arg-type]
    for it in tqdm(range(n_iter), desc="IBI", disable=not progress, mininterval=1.0):
        pot = TabulatedPotential(r, u, r_cut=r_cut, r_on=r_on, r_table_min=float(r[0]))
        table = pot.table(device=device)
        with torch.no_grad():
            ens.equilibrate(table, equil_steps)
            g = ens.run_rdf(table, prod_steps, observe_every).cpu().numpy()
        gk = g[:, keep]
        ok = (gk > g_floor) & (G > g_floor)
        lr = np.where(ok, np.log(np.where(ok, gk, 1.0) / np.where(ok, G, 1.0)), 0.0)
        lr = np.clip(lr, -max_log_ratio, max_log_ratio)
        du = _smooth((w[:, None] * kT[:, None] * lr).sum(0), smooth)
        u = _extrapolate_core(r, u + alpha * du, k_valid, min_slope=10 * kT.max())
        result.history.append({"iteration": it + 1,
                               "mae": {s.name: float(np.abs(g[i] - s.target).mean()) for i, s in enumerate(states)}})
        result.tables.append(u.copy())
    if average_last > 0:
        u = np.mean(result.tables[-int(average_last):], axis=0)
    result.u = u
    result.potential = TabulatedPotential(r, u, r_cut=r_cut, r_on=r_on, r_table_min=float(r[0]))
    return result
