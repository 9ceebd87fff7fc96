"""DiffSim: fit a pair potential to target RDFs by differentiating through MD (reduced LJ units).

Each optimisation step tabulates the potential (keeping the autograd graph to its parameters), runs
``tau`` MD steps of every replica of every state from the current, detached state (truncated
backpropagation through time), averages the smoothed g(r) observed in that window per state, and
takes an Adam step on

    L = sum_s w_s mean_k (g_s(r_k) - g_s^target(r_k))^2 / sum_s w_s,

where g_s is the total g(r) of state s, or its partial RDFs g_ab(r) when the target is 2-D (mixtures
with a :class:`~cg.diffsim.potentials.TypedPairPotential`, several compositions at once). A
temperature-dependent potential (:class:`~cg.diffsim.potentials.EntropicPairPotential`) is
tabulated once per state, so all temperatures are simulated and fitted together.

The simulation continues from where the window ended, so the systems stay equilibrated with the
slowly changing potential. Checkpoints (potential, optimiser, scheduler, MD state, RNG, history)
allow resuming.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.fileio import atomic_path

from .ensemble import Ensemble, State
from .observables import RDF
from .potentials import PairPotential


def lj_guess_from_rdf(r: np.ndarray, g: np.ndarray, temperature: float) -> tuple[float, float]:
    """(epsilon, sigma) of an LJ potential whose minimum matches that of the PMF -kT ln g(r).

    The same Boltzmann-inverted starting point as IBI's first iterate, so both methods start alike.
    """
    ok = g > 1e-3
    if ok.sum() < 3:
        raise InputError("lj_guess_from_rdf: the target g(r) has fewer than 3 bins above 1e-3")
    pmf = np.full_like(g, np.inf)
    pmf[ok] = -temperature * np.log(g[ok])
    k = int(np.argmin(pmf))
    eps = max(float(-pmf[k]), 0.05)
    return eps, float(r[k]) / 2 ** (1 / 6)


def boltzmann_inversion(r: np.ndarray, g: np.ndarray, temperature: float, r_cut: float = 2.5,
                        g_floor: float = 1e-2, u_max: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """(r, PMF) with PMF = -kT ln g on the bins below ``r_cut`` where g > ``g_floor``, continued into the core
    by a steep linear repulsion (as IBI starts) and capped at ``u_max`` kT."""
    keep = r < r_cut
    r, g = np.asarray(r)[keep], np.asarray(g)[keep]
    ok = g > g_floor
    if ok.sum() < 4:
        raise InputError("boltzmann_inversion: fewer than 4 bins with g above g_floor")
    k = int(np.argmax(ok))
    u = -temperature * np.log(np.maximum(g, g_floor))
    if k + 1 < len(r):
        slope = min((u[k + 1] - u[k]) / (r[k + 1] - r[k]), -10 * temperature)
        u[:k] = u[k] + slope * (r[:k] - r[k])
    return r, np.minimum(u, u_max * temperature)


def fit_to_pmf(potential: PairPotential, r: np.ndarray, g: dict[float, np.ndarray], steps: int = 400,
               lr: float = 0.01, r_min: float | None = None) -> float:
    """Initialise a learnable potential to the Boltzmann-inverted targets (the start IBI uses), with no MD.

    ``g`` maps temperatures to target g(r) on the grid ``r``: the potential (at each temperature for a
    temperature-dependent one, so u(r; T) starts from the PMF of every training temperature) is fitted
    by least squares to -kT ln g (see :func:`boltzmann_inversion`) on [r_min, r_cut) (default: from 0.1
    below the first bin where g > 0.01), with the cutoff switch applied to the PMF too. Returns the
    final RMS difference.
    """
    from .potentials import smooth_switch

    params = [p for p in potential.parameters() if p.requires_grad]
    if not params:
        return float("nan")
    dt = params[0].dtype
    data = []
    for T, gt in g.items():
        rr, u = boltzmann_inversion(r, gt, T, potential.r_cut)
        lo = r_min if r_min is not None else rr[int(np.argmax(np.asarray(gt)[:len(rr)] > 1e-2))] - 0.1
        sel = rr >= lo
        rt = torch.tensor(rr[sel], dtype=torch.float64)
        ut = torch.tensor(u[sel], dtype=torch.float64) * smooth_switch(rt, potential.r_on, potential.r_cut)
        data.append((float(T), rt, ut))
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.0
        for T, rt, ut in data:
            pred = potential(rt.to(dt), T) if potential.temperature_dependent else potential(rt.to(dt))
            loss = loss + ((pred.double() - ut) ** 2).mean() / len(data)
        loss.backward()
        opt.step()
    return float(loss.detach()) ** 0.5


class DiffSimFitter:
    """Fit ``potential`` to the targets of ``states`` with differentiable simulation.

    Parameters
    ----------
    potential : a learnable :class:`~cg.diffsim.potentials.PairPotential`.
    states : states with ``target`` g(r) on the grid of ``rdf`` (per-state ``weight``, replicas).
    rdf : RDF estimator shared with the targets.
    tau : MD steps per optimisation step (the backpropagation window).
    observe_every : steps between RDF frames inside a window.
    lr, lr_decay : Adam learning rate (of the physical prior's parameters) and per-step decay factor.
    lr_hold : steps at the full learning rate before the decay starts (default 0).
    net_start : the network's parameters stay fixed for the first ``net_start`` steps (the physical prior
        converges first; the network then corrects what the prior cannot express). Default 0.
    net_lr_scale : the network's learning rate is ``lr * net_lr_scale``.
    vacf_weight : weight of an extra loss on the velocity autocorrelation (needs ``target_vacf`` on every
        state; lag k of the target is k * ``observe_every`` steps). 0 (default): RDF only.
    dt, friction, thermostat : MD time step, Langevin friction, ``"langevin"`` or ``"nhc"`` (Nosé–Hoover chain).
    equil_steps : steps run (without gradients) with the initial potential before fitting.
    table_points : grid size of the tabulation used by the MD engine.
    device : torch device for MD and potential.
    grad_clip : clip the gradient norm (None: no clipping).
    residual_momentum : if > 0, the residual g - g_target in the gradient 2 (g - g_target) dg/dtheta is an
        exponential average over windows with this factor (the Jacobian stays the current window's),
        which reduces the noise of the short windows at the cost of a slight lag.
    residual_from_past : with ``residual_momentum`` > 0, the residual is the average over the *previous*
        windows only (the current window supplies only the Jacobian). The g(r) noise of a window and the
        noise of its Jacobian dg/dtheta are correlated, so their product has a non-zero mean even where the
        expected g matches the target: a bias in the fixed point (a too shallow well for LJ). A residual
        from other windows removes that covariance. Default False (the behaviour of earlier versions).
    """

    def __init__(self, potential: PairPotential, states: list[State], rdf: RDF, tau: int = 100,
                 observe_every: int = 5, lr: float = 5e-3, lr_decay: float = 1.0, dt: float = 0.005,
                 friction: float = 1.0, equil_steps: int = 500, table_points: int = 2048, seed: int = 0,
                 device=None, grad_clip: float | None = 1.0, residual_momentum: float = 0.0,
                 net_lr_scale: float = 0.2, vacf_weight: float = 0.0, thermostat: str = "langevin",
                 lr_hold: int = 0, net_start: int = 0, residual_from_past: bool = False):
        for s in states:
            t = None if s.target is None else np.asarray(s.target)
            nch = s.n_types * (s.n_types + 1) // 2
            if t is None or t.shape not in ((rdf.n_bins,), (nch, rdf.n_bins)):
                raise InputError(f"state {s.name}: target g(r) must have {rdf.n_bins} bins (the RDF grid), or shape "
                                 f"({nch}, {rdf.n_bins}) for the partial RDFs of its {s.n_types} types")
        self.device = torch.device(device or "cpu")
        self.potential = potential.to(self.device)
        self.states, self.rdf = states, rdf
        self.tau, self.observe_every, self.table_points = int(tau), int(observe_every), int(table_points)
        self.grad_clip = grad_clip
        self.vacf_weight = float(vacf_weight)
        self.vacf_targets = None
        if self.vacf_weight > 0:
            if any(s.target_vacf is None for s in states):
                raise InputError("vacf_weight > 0 needs target_vacf on every state")
            self.vacf_targets = torch.tensor(np.stack([s.target_vacf for s in states]), dtype=torch.float64,
                                             device=torch.device(device or "cpu"))
        self.residual_momentum = float(residual_momentum)
        self.residual_from_past = bool(residual_from_past)
        self._g_avg: torch.Tensor | None = None
        self.ensemble = Ensemble(states, rdf, r_cut=potential.r_cut, dt=dt, friction=friction, seed=seed,
                                 device=self.device, thermostat=thermostat)
        # targets of all states flattened into one vector (total g(r) or partial g_ab(r) per state)
        self._partial = [np.asarray(s.target).ndim == 2 for s in states]
        flat = [np.asarray(s.target, float).reshape(-1) for s in states]
        ends = np.cumsum([len(f) for f in flat])
        self._segments = [(int(e - len(f)), int(e)) for f, e in zip(flat, ends)]
        self.targets = torch.tensor(np.concatenate(flat), dtype=torch.float64, device=self.device)
        w = torch.tensor([s.weight for s in states], dtype=torch.float64, device=self.device)
        self.weights = w / w.sum()
        prior = [p for n, p in self.potential.named_parameters()
                 if "prior." in n or n.split(".")[-1] in ("log_eps", "log_sigma")]
        ids = {id(p) for p in prior}
        rest = [p for p in self.potential.parameters() if id(p) not in ids]
        groups = [g for g in ({"params": prior, "lr": lr}, {"params": rest, "lr": lr * net_lr_scale}) if g["params"]]
        self.optimizer = torch.optim.Adam(groups, lr=lr)
        hold, decay, start = int(lr_hold), float(lr_decay), int(net_start)
        lambdas = [lambda k: decay ** max(0, k - hold)]
        if len(groups) == 2 or not prior:  # the network's group: frozen for the first net_start steps
            lambdas.append(lambda k: 0.0 if k < start else decay ** max(0, k - hold))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas[-len(groups):])
        self.step_count = 0
        self.history: list[dict] = []
        self.equil_steps = int(equil_steps)
        self._equilibrated = False
        self._avg: dict[str, torch.Tensor] = {}
        self._n_avg = 0

    def _table(self, grad: bool = True):
        """The potential's table, or one per state for a temperature-dependent potential."""
        return self.potential.state_tables([s.temperature for s in self.states], self.table_points,
                                           device=self.device, create_graph=grad)

    def step(self) -> dict:
        """One optimisation step; returns the loss and per-state MSE / MAE of the window's g(r)."""
        t0 = time.perf_counter()
        if not self._equilibrated:
            with torch.no_grad():
                self.ensemble.equilibrate(self._table(grad=False), self.equil_steps)
            self._equilibrated = True
        self.ensemble.detach()
        self.optimizer.zero_grad()
        lag = self.vacf_targets.shape[1] if self.vacf_targets is not None else 0
        out = self.ensemble.run_all(self._table(), self.tau, self.observe_every, grad=True, vacf_lag=lag,
                                    partial=any(self._partial))
        c = out["vacf"]
        g = torch.cat([out["g_partial"][i].reshape(-1) if p else out["g"][i] for i, p in enumerate(self._partial)])
        diff = g - self.targets
        mse = torch.stack([(diff[a:b] ** 2).mean() for a, b in self._segments])
        loss = (self.weights * mse).sum()
        vacf_loss = None
        if lag:
            vacf_loss = self.vacf_weight * (self.weights * ((c - self.vacf_targets) ** 2).mean(1)).sum()
        if not torch.isfinite(loss):
            raise RuntimeError(f"DiffSim step {self.step_count}: non-finite loss (simulation blew up); lower lr or dt")
        if self.residual_momentum > 0:
            # gradient 2 (g_avg - g_target) dg/dtheta with the residual averaged over recent windows
            gd = g.detach()
            b = self.residual_momentum
            past = self._g_avg
            self._g_avg = gd if self._g_avg is None else b * self._g_avg + (1 - b) * gd
            resid = (past if self.residual_from_past and past is not None else self._g_avg) - self.targets
            surrogate = (self.weights * torch.stack([(2 * resid[a:b] * g[a:b]).mean() for a, b in self._segments])).sum()
            (surrogate + vacf_loss if vacf_loss is not None else surrogate).backward()
        else:
            (loss + vacf_loss if vacf_loss is not None else loss).backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.potential.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ensemble.detach()
        self.step_count += 1
        rec = {"step": self.step_count, "loss": float(loss.detach()),
               "mae": {s.name: float(diff[a:b].detach().abs().mean()) for (a, b), s in zip(self._segments, self.states)},
               "lr": float(self.optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - t0}
        if vacf_loss is not None:
            rec["vacf_loss"] = float(vacf_loss.detach())
        self.history.append(rec)
        return rec

    def fit(self, n_steps: int, checkpoint: str | Path | None = None, checkpoint_every: int = 20,
            progress: bool = True, callback: Callable[[dict], None] | None = None,
            average_last: float = 0.5, final_steps: int = 0, final_tau: int | None = None,
            final_momentum: float | None = None) -> list[dict]:
        """Run optimisation steps until ``n_steps`` in total (resuming counts earlier ones).

        The parameters of the last ``average_last`` fraction of the steps are averaged (stochastic
        weight averaging, which removes most of the step-to-step noise of the stochastic RDF
        gradients); the averaged parameters are loaded into the potential at the end.

        Fine-tuning phase: the last ``final_steps`` steps use windows of ``final_tau`` MD steps (longer
        windows: less noisy g(r) and gradients, and a backpropagation horizon closer to the structural
        relaxation time) and, if given, the residual momentum ``final_momentum``.
        """
        from tqdm.auto import tqdm

        if checkpoint is not None and Path(checkpoint).exists():
            self.load_checkpoint(checkpoint)
        start_avg = int(round(n_steps * (1.0 - average_last))) if average_last > 0 else n_steps + 1
        start_final = n_steps - int(final_steps) if final_steps > 0 else n_steps + 1
        tau0, mom0 = self.tau, self.residual_momentum
        bar = tqdm(total=n_steps, initial=self.step_count, desc="DiffSim", disable=not progress, mininterval=1.0)
        try:
            while self.step_count < n_steps:
                if self.step_count >= start_final:
                    self.tau = int(final_tau or tau0)
                    if final_momentum is not None:
                        self.residual_momentum = float(final_momentum)
                rec = self.step()
                rec["tau"] = self.tau
                if self.step_count > start_avg:
                    self._accumulate_average()
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.2e}")
                if callback is not None:
                    callback(rec)
                if checkpoint is not None and (self.step_count % checkpoint_every == 0 or self.step_count == n_steps):
                    self.save_checkpoint(checkpoint)
        finally:
            self.tau, self.residual_momentum = tau0, mom0
            bar.close()
        if self._n_avg > 0:
            self.potential.load_state_dict({**self.potential.state_dict(), **self._avg}, strict=True)
        return self.history

    def _accumulate_average(self) -> None:
        self._n_avg += 1
        with torch.no_grad():
            for k, p in self.potential.named_parameters():
                p = p.detach().clone()
                self._avg[k] = p if k not in self._avg else self._avg[k] + (p - self._avg[k]) / self._n_avg

    def save_checkpoint(self, path: str | Path) -> None:
        """Everything needed to resume, saved atomically (loadable with ``weights_only=True``)."""
        sims = self.ensemble.groups
        payload = {
            "format": "cgworkbench-diffsim-checkpoint",
            "potential": {k: v.detach().cpu() for k, v in self.potential.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "history_json": json.dumps(self.history),
            "x": [s.x.detach().cpu() for s, _ in sims],
            "v": [s.v.detach().cpu() for s, _ in sims],
            "rng": [s.gen.get_state() for s, _ in sims],
            "xi": [s.xi.detach().cpu() for s, _ in sims],
            "v_xi": [s.v_xi.detach().cpu() for s, _ in sims],
            "equilibrated": self._equilibrated,
            "avg": {k: v.cpu() for k, v in self._avg.items()},
            "n_avg": self._n_avg,
            "g_avg": self._g_avg.cpu() if self._g_avg is not None else torch.zeros(0),
        }
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self, path: str | Path) -> None:
        try:
            p = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable DiffSim checkpoint ({e})") from e
        if not isinstance(p, dict) or p.get("format") != "cgworkbench-diffsim-checkpoint":
            raise InputError(f"{path}: not a DiffSim checkpoint")
        if len(p["x"]) != len(self.ensemble.groups) or any(
                x.shape != s.x.shape for x, (s, _) in zip(p["x"], self.ensemble.groups)):
            raise InputError(f"{path}: checkpoint was written for different states / particle numbers")
        self.potential.load_state_dict(p["potential"])
        self.optimizer.load_state_dict(p["optimizer"])
        self.scheduler.load_state_dict(p["scheduler"])
        self.step_count = int(p["step"])
        self.history = json.loads(p["history_json"])
        for (sim, _), x, v, rng, xi, v_xi in zip(self.ensemble.groups, p["x"], p["v"], p["rng"], p["xi"], p["v_xi"]):
            sim.x, sim.v = x.to(sim.device, sim.dtype), v.to(sim.device, sim.dtype)
            sim.xi, sim.v_xi = xi.to(sim.device, sim.dtype), v_xi.to(sim.device, sim.dtype)
            sim.gen.set_state(rng)
            sim.nl.x_ref = None
        self._equilibrated = bool(p["equilibrated"])
        self._avg = {k: v.to(self.device) for k, v in p["avg"].items()}
        self._n_avg = int(p["n_avg"])
        self._g_avg = p["g_avg"].to(self.device) if p["g_avg"].numel() else None

    @staticmethod
    def step_time(history: list[dict], skip: int = 1) -> float:
        """Mean wall time per optimisation step (s), skipping the first ``skip`` steps (equilibration)."""
        t = [h["time_s"] for h in history[skip:]] or [h["time_s"] for h in history]
        return float(np.mean(t)) if t else math.nan
