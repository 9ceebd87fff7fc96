"""The DiffSim recipe, written once: (target states, RDF grid, config) → fitted pair potential.

The starting potential follows the targets: one potential per type pair for partial RDFs (mixtures),
``u(r; T) = e(r) − T s(r)`` for targets at several temperatures with ``temperature_dependent``, otherwise one
neural pair potential on an LJ-family prior. Its prior starts at the minimum of the Boltzmann-inverted
target (``init = "lj"``, as IBI starts) or is fitted to the PMFs (``init = "pmf"``); then
:class:`~cg.diffsim.fit.DiffSimFitter` matches the simulated RDFs to the targets. ``cgwb diffsim fit`` and
``benchmarks/diffsim_vs_ibi.py`` call :func:`fit_pair_potential`. Reduced LJ units (see :mod:`cg.diffsim`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from forcefield.config import Config
from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .ensemble import State
from .fit import DiffSimFitter, fit_to_pmf, lj_guess_from_rdf
from .observables import RDF, type_pairs
from .potentials import (EntropicPairPotential, LennardJones, NeuralPairPotential, TypedPairPotential, load_model,
                         save_model)


class DiffSimConfig(Config):
    """Settings of :func:`fit_pair_potential`.

    steps, tau : optimisation steps and MD steps per window; final_steps windows of final_tau steps end the fit.
    lr, lr_decay : learning rate of the prior and its per-step decay (default: to 10 % over ``steps``);
    the network learns at ``net_lr_scale × lr`` from step ``net_start``. average_last : share of the last
    steps whose parameters are averaged. pair_model : potential per type pair for mixtures (``neural`` on a
    prior, or a learnable ``lj``).
    """

    prior: Literal["lj", "repulsive", "none"] = "lj"
    hidden: int = Field(64, gt=0)
    temperature_dependent: bool = False
    pair_model: Literal["neural", "lj"] = "neural"
    init: Literal["lj", "pmf"] = "lj"
    steps: int = Field(200, gt=0)
    tau: int = Field(100, gt=0)
    lr: float = Field(0.02, gt=0)
    lr_decay: float | None = Field(None, gt=0, le=1)
    residual_momentum: float = Field(0.5, ge=0, lt=1)
    net_lr_scale: float = Field(0.1, gt=0)
    net_start: int = Field(0, ge=0)
    final_steps: int = Field(0, ge=0)
    final_tau: int = Field(300, ge=1)
    final_momentum: float = Field(0.8, ge=0, lt=1)
    average_last: float = Field(0.5, ge=0, le=1)
    vacf_weight: float = Field(0.0, ge=0)


@dataclass
class PairFit:
    """Result of :func:`fit_pair_potential`: the potential, the optimisation history and timings."""

    potential: Any
    config: DiffSimConfig
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (the potential, :func:`save_model`) and ``path.json`` (config, history, info)."""
        path = Path(path)
        save_model(self.potential, path)
        with atomic_path(path.with_name(path.name + ".json")) as tmp:
            tmp.write_text(json.dumps({"config": self.config.model_dump(), "history": self.history,
                                       "info": self.info}, indent=1, default=float))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PairFit":
        path = Path(path)
        meta = path.with_name(path.name + ".json")
        d = json.loads(meta.read_text()) if meta.exists() else {"config": {}, "history": [], "info": {}}
        return cls(load_model(path), DiffSimConfig.build(d["config"], source=str(meta)), d["history"], d["info"])


def initial_potential(states: list[State], rdf: RDF, config: DiffSimConfig) -> Any:
    """The learnable starting potential for these targets (see the module docstring)."""
    cfg = config
    if not states or any(s.target is None for s in states):
        raise InputError("DiffSim needs states with target RDFs")
    partial = np.asarray(states[0].target).ndim == 2
    temps = sorted({s.temperature for s in states})
    if cfg.temperature_dependent and (partial or len(temps) < 2):
        raise InputError("temperature_dependent needs total-g(r) targets at two or more temperatures")
    if partial:
        pots = {}
        for ch, (i, j) in enumerate(type_pairs(states[0].n_types)):
            gch = np.mean([s.target[ch] for s in states], axis=0)
            eps, sig = lj_guess_from_rdf(rdf.r, gch, states[0].temperature)
            pots[(i, j)] = (LennardJones(eps, sig) if cfg.pair_model == "lj" else
                            NeuralPairPotential(prior=cfg.prior, epsilon=eps, sigma=sig, hidden=cfg.hidden))
        pot: Any = TypedPairPotential(pots)
    else:
        eps, sig = lj_guess_from_rdf(rdf.r, states[0].target, states[0].temperature)
        if cfg.temperature_dependent:
            pot = EntropicPairPotential(t_ref=float(np.mean(temps)), prior=cfg.prior, epsilon=eps, sigma=sig,
                                        hidden=cfg.hidden, t_scale=0.5 * (max(temps) - min(temps)))
        else:
            pot = NeuralPairPotential(prior=cfg.prior, epsilon=eps, sigma=sig, hidden=cfg.hidden)
    if cfg.init == "pmf":
        if partial:
            raise InputError("init = 'pmf' is for total-g(r) targets (not partial RDFs)")
        fit_to_pmf(pot, rdf.r, {T: np.mean([s.target for s in states if s.temperature == T], axis=0) for T in temps})
    return pot


def fit_pair_potential(states: list[State], rdf: RDF, config: DiffSimConfig | None = None, *,
                       device: Any = None, seed: int = 0, checkpoint: str | os.PathLike | None = None,
                       progress: bool = True) -> PairFit:
    """Fit a pair potential to the target RDFs of ``states`` by differentiable simulation.

    The starting network is drawn with ``torch.manual_seed(seed)``; the simulations use ``seed + 2``.
    """
    cfg = config or DiffSimConfig()
    torch.manual_seed(seed)
    pot = initial_potential(states, rdf, cfg)
    t0 = time.perf_counter()
    fitter = DiffSimFitter(pot, states, rdf, tau=cfg.tau, lr=cfg.lr,
                           lr_decay=cfg.lr_decay if cfg.lr_decay is not None else 0.1 ** (1 / cfg.steps),
                           residual_momentum=cfg.residual_momentum, net_lr_scale=cfg.net_lr_scale, seed=seed + 2,
                           device=device, vacf_weight=cfg.vacf_weight, observe_every=10 if cfg.vacf_weight > 0 else 5,
                           net_start=cfg.net_start)
    if cfg.final_steps > cfg.steps:
        raise InputError("final_steps must be at most steps")
    history = fitter.fit(cfg.steps, checkpoint=checkpoint, progress=progress, average_last=cfg.average_last,
                         final_steps=cfg.final_steps, final_tau=cfg.final_tau,
                         final_momentum=cfg.final_momentum if cfg.final_steps else None)
    fit_s = time.perf_counter() - t0
    return PairFit(pot, cfg, history, {"fit_s": fit_s, "step_s": DiffSimFitter.step_time(history),
                                       "md_steps": int(sum(h["tau"] for h in history))})
