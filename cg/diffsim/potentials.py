"""Pair potentials for :mod:`cg.diffsim` (reduced LJ units: energies in epsilon, lengths in sigma).

Every potential is a ``torch.nn.Module`` mapping distances r to energies u(r) and is tabulated for the
MD engine with :meth:`PairPotential.table` (one tabulation per optimisation step; gradients flow
from the table to the parameters).

* :class:`LennardJones`: 4 eps [(s/r)^12 - (s/r)^6] with learnable eps, s (kept positive).
* :class:`NeuralPairPotential`: physical prior (LJ family: ``"lj"``, ``"repulsive"`` (s/r)^12 or
  none) plus an MLP on a smooth radial basis (Gaussians), all multiplied by a smooth cutoff switch.
* :class:`TabulatedPotential`: a fixed table (e.g. from IBI) interpolated with a cubic spline.

Every potential goes smoothly to zero between ``r_on`` and ``r_cut`` with a C2 quintic switch.
Models are saved with :func:`save_model` (config + state dict, loaded with ``weights_only=True``) and
tables with :func:`write_table` (.npz or .csv: r, u, f = -du/dr).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from forcefield.errors import InputError
from forcefield.fileio import atomic_path, load_npz, save_npz

from .md import PairTable, table_from_function


def smooth_switch(r: torch.Tensor, r_on: float, r_cut: float) -> torch.Tensor:
    """C2 switch: 1 below ``r_on``, 0 beyond ``r_cut``, 1 - 10x^3 + 15x^4 - 6x^5 in between."""
    x = torch.clamp((r - r_on) / (r_cut - r_on), 0.0, 1.0)
    return 1 - x ** 3 * (10 - 15 * x + 6 * x * x)


def lj_energy(r, epsilon: float = 1.0, sigma: float = 1.0):
    """Plain Lennard-Jones 4 eps [(s/r)^12 - (s/r)^6] (numpy or torch)."""
    s6 = (sigma / r) ** 6
    return 4 * epsilon * (s6 * s6 - s6)


class PairPotential(nn.Module):
    """Base class: subclasses implement :meth:`raw` (energy before the switch)."""

    kind = "base"
    temperature_dependent = False
    n_types = 1

    def __init__(self, r_cut: float = 2.5, r_on: float = 2.2, r_table_min: float = 0.5):
        super().__init__()
        if not 0 < r_table_min < r_on < r_cut:
            raise InputError(f"{type(self).__name__}: need 0 < r_table_min < r_on < r_cut, got "
                             f"{r_table_min}, {r_on}, {r_cut}")
        self.r_cut, self.r_on, self.r_table_min = float(r_cut), float(r_on), float(r_table_min)

    def raw(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """u(r) including the cutoff switch."""
        return self.raw(r) * smooth_switch(r, self.r_on, self.r_cut)

    def table(self, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
              create_graph: bool = True) -> PairTable:
        """Tabulate u and du/dr on ``n`` points from ``r_table_min`` to ``r_cut`` for the MD engine."""
        p = next(self.parameters(), None)
        dev = device or (p.device if p is not None else None)

        def fn(r):
            pdt = p.dtype if p is not None else r.dtype
            return self(r.to(pdt)).to(r.dtype)

        return table_from_function(fn, self.r_table_min, self.r_cut, n, dtype=dtype, device=dev,
                                   create_graph=create_graph)

    def config(self) -> dict:
        return {"kind": self.kind, "r_cut": self.r_cut, "r_on": self.r_on, "r_table_min": self.r_table_min}

    def state_table(self, temperature: float, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
                    create_graph: bool = True) -> PairTable:
        """Table at a state of temperature ``temperature`` (the same for state-independent potentials)."""
        return self.table(n, dtype, device, create_graph)

    def state_tables(self, temperatures, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
                     create_graph: bool = True):
        """One table shared by all states, or (temperature-dependent potentials) a list, one per state."""
        if not self.temperature_dependent:
            return self.table(n, dtype, device, create_graph)
        return [self.state_table(float(T), n, dtype, device, create_graph) for T in temperatures]

    @torch.no_grad()
    def evaluate(self, r: np.ndarray, temperature: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(u, du/dr) as float64 numpy at distances ``r`` (through the same table the MD uses); for a
        temperature-dependent potential at ``temperature`` (default: its reference temperature)."""
        if temperature is not None or self.temperature_dependent:
            t = self.state_table(temperature if temperature is not None else getattr(self, "t_ref", 1.0),
                                 create_graph=False, device="cpu")
        else:
            t = self.table(create_graph=False, device="cpu")
        u, du = t(torch.as_tensor(np.asarray(r, float), dtype=torch.float64))
        return u.numpy(), du.numpy()


class LennardJones(PairPotential):
    """LJ 4 eps [(s/r)^12 - (s/r)^6] with learnable eps and s (log-parametrised), smoothly cut off."""

    kind = "lj"

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, learnable: bool = True, **kw):
        super().__init__(**kw)
        le = torch.tensor(math.log(epsilon), dtype=torch.float64)
        ls = torch.tensor(math.log(sigma), dtype=torch.float64)
        if learnable:
            self.log_eps, self.log_sigma = nn.Parameter(le), nn.Parameter(ls)
        else:
            self.register_buffer("log_eps", le)
            self.register_buffer("log_sigma", ls)

    @property
    def epsilon(self) -> float:
        return float(self.log_eps.detach().exp())

    @property
    def sigma(self) -> float:
        return float(self.log_sigma.detach().exp())

    def raw(self, r):
        return lj_energy(r, self.log_eps.exp().to(r.dtype), self.log_sigma.exp().to(r.dtype))

    def config(self) -> dict:
        return {**super().config(), "epsilon": self.epsilon, "sigma": self.sigma}


class GaussianBasis(nn.Module):
    """``n`` Gaussians with centres evenly spaced on [r_lo, r_hi] and width = spacing."""

    def __init__(self, r_lo: float, r_hi: float, n: int):
        super().__init__()
        self.register_buffer("mu", torch.linspace(r_lo, r_hi, n))
        self.gamma = 0.5 / ((r_hi - r_lo) / (n - 1)) ** 2

    def forward(self, r):
        return torch.exp(-self.gamma * (r[..., None] - self.mu.to(r.dtype)) ** 2)


class NeuralPairPotential(PairPotential):
    """u(r) = [prior(r) + MLP(basis(r))] * switch(r).

    Parameters
    ----------
    prior : ``"lj"`` (learnable LJ), ``"repulsive"`` (eps (s/r)^12, learnable) or ``"none"``.
    epsilon, sigma : initial prior parameters.
    n_basis, hidden, layers : Gaussian basis size on [basis_min, r_cut] and MLP shape (SiLU).
    dtype : network dtype (float32 by default; the table is float64 either way).

    The last layer starts at zero, so the initial potential is the prior.
    """

    kind = "neural"

    def __init__(self, prior: str = "lj", epsilon: float = 1.0, sigma: float = 1.0, n_basis: int = 32,
                 hidden: int = 64, layers: int = 2, basis_min: float = 0.6, dtype: torch.dtype = torch.float32,
                 **kw):
        super().__init__(**kw)
        if prior not in ("lj", "repulsive", "none"):
            raise InputError(f"NeuralPairPotential: prior must be 'lj', 'repulsive' or 'none', got {prior!r}")
        self.prior_kind, self.n_basis, self.hidden, self.layers = prior, n_basis, hidden, layers
        self.basis_min = float(basis_min)
        self.prior = LennardJones(epsilon, sigma, r_cut=self.r_cut, r_on=self.r_on,
                                  r_table_min=self.r_table_min) if prior != "none" else None
        self.basis = GaussianBasis(self.basis_min, self.r_cut, n_basis)
        mods, w = [], n_basis
        for _ in range(layers):
            mods += [nn.Linear(w, hidden), nn.SiLU()]
            w = hidden
        last = nn.Linear(w, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*mods, last).to(dtype)

    def raw(self, r):
        net_dtype = self.mlp[-1].weight.dtype
        u = self.mlp(self.basis(r.to(net_dtype))).squeeze(-1).to(r.dtype)
        if self.prior is not None:
            if self.prior_kind == "lj":
                u = u + self.prior.raw(r)
            else:
                s = self.prior.log_sigma.exp().to(r.dtype) / r
                u = u + self.prior.log_eps.exp().to(r.dtype) * s ** 12
        return u

    def config(self) -> dict:
        return {**super().config(), "prior": self.prior_kind, "n_basis": self.n_basis, "hidden": self.hidden,
                "layers": self.layers, "basis_min": self.basis_min,
                "epsilon": self.prior.epsilon if self.prior is not None else 1.0,
                "sigma": self.prior.sigma if self.prior is not None else 1.0}


class EntropicPairPotential(PairPotential):
    """Temperature-dependent pair potential u(r; T) = e(r) - T s(r), an energy/entropy split.

    Effective (coarse-grained) pair potentials are free energies, so they depend on the state. This
    potential learns the energy part e(r) (a :class:`NeuralPairPotential` with an LJ-family prior) and
    the entropy part s(r) (an MLP on the same kind of basis, no prior, zero at the start) jointly from
    targets at several temperatures; it is parametrised as u(r; T) = e_ref(r) - (T - t_ref) s(r), with
    e_ref = e - t_ref s the potential at the reference temperature ``t_ref`` (the starting point).
    The entropy network's output is divided by ``t_scale`` (e.g. half the range of training
    temperatures), so that it changes u(r; T) at the training temperatures as fast as the energy
    network does. One table per state (:meth:`state_table`) goes to the MD engine.
    """

    kind = "entropic"
    temperature_dependent = True

    def __init__(self, t_ref: float = 1.0, prior: str = "lj", epsilon: float = 1.0, sigma: float = 1.0,
                 n_basis: int = 32, hidden: int = 64, layers: int = 2, basis_min: float = 0.6,
                 s_hidden: int = 32, dtype: torch.dtype = torch.float32, t_scale: float = 1.0, **kw):
        super().__init__(**kw)
        if t_ref <= 0 or t_scale <= 0:
            raise InputError(f"EntropicPairPotential: t_ref and t_scale must be > 0, got {t_ref}, {t_scale}")
        self.t_ref, self.s_hidden, self.t_scale = float(t_ref), int(s_hidden), float(t_scale)
        self.energy = NeuralPairPotential(prior=prior, epsilon=epsilon, sigma=sigma, n_basis=n_basis, hidden=hidden,
                                          layers=layers, basis_min=basis_min, dtype=dtype, r_cut=self.r_cut,
                                          r_on=self.r_on, r_table_min=self.r_table_min)
        self.entropy = NeuralPairPotential(prior="none", n_basis=n_basis, hidden=s_hidden, layers=layers,
                                           basis_min=basis_min, dtype=dtype, r_cut=self.r_cut, r_on=self.r_on,
                                           r_table_min=self.r_table_min)

    def raw(self, r, temperature: float | None = None):
        T = self.t_ref if temperature is None else float(temperature)
        return self.energy.raw(r) - (T - self.t_ref) / self.t_scale * self.entropy.raw(r)

    def forward(self, r, temperature: float | None = None):
        return self.raw(r, temperature) * smooth_switch(r, self.r_on, self.r_cut)

    def s(self, r: np.ndarray) -> np.ndarray:
        """The entropy part s(r) = -du/dT (switched), as numpy."""
        with torch.no_grad():
            rt = torch.as_tensor(np.asarray(r, float), dtype=torch.float64)
            return (self.entropy(rt) / self.t_scale).numpy()

    def state_table(self, temperature: float, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
                    create_graph: bool = True) -> PairTable:
        p = next(self.parameters())
        dev = device or p.device

        def fn(r):
            return self(r.to(p.dtype), temperature).to(r.dtype)

        return table_from_function(fn, self.r_table_min, self.r_cut, n, dtype=dtype, device=dev,
                                   create_graph=create_graph)

    def config(self) -> dict:
        e = self.energy.config()
        return {**super().config(), "t_ref": self.t_ref, "prior": e["prior"], "epsilon": e["epsilon"],
                "sigma": e["sigma"], "n_basis": e["n_basis"], "hidden": e["hidden"], "layers": e["layers"],
                "basis_min": e["basis_min"], "s_hidden": self.s_hidden, "t_scale": self.t_scale}


class TypedPairPotential(PairPotential):
    """One pair potential per pair of particle types (a <= b) of a mixture; tabulates as a table set of
    n_types^2 rows (row a * n_types + b, symmetric) for the MD engine.

    Parameters
    ----------
    potentials : dict ``{(a, b): PairPotential}`` for every a <= b < n_types (all with the same cutoff).
    """

    kind = "typed"

    def __init__(self, potentials: dict, **kw):
        pots = {tuple(sorted(map(int, k))): v for k, v in dict(potentials).items()}
        nt = max(max(k) for k in pots) + 1
        need = {(a, b) for a in range(nt) for b in range(a, nt)}
        if set(pots) != need:
            raise InputError(f"TypedPairPotential: need a potential for every type pair a <= b < {nt}, got "
                             f"{sorted(pots)}")
        first = next(iter(pots.values()))
        kw.setdefault("r_cut", first.r_cut)
        kw.setdefault("r_on", first.r_on)
        kw.setdefault("r_table_min", min(p.r_table_min for p in pots.values()))
        super().__init__(**kw)
        if any(p.temperature_dependent or isinstance(p, TypedPairPotential) for p in pots.values()):
            raise InputError("TypedPairPotential: the type-pair potentials must be plain (temperature-independent) "
                             "pair potentials")
        self.n_types = nt
        self.type_keys = sorted(pots)
        self.pairs = nn.ModuleDict({f"{a}-{b}": pots[(a, b)] for a, b in self.type_keys})

    def pair(self, a: int, b: int) -> PairPotential:
        a, b = sorted((int(a), int(b)))
        return self.pairs[f"{a}-{b}"]

    def raw(self, r):  # pragma: no cover - a mixture has no single u(r)
        raise InputError("TypedPairPotential has one potential per type pair: use .pair(a, b)")

    def forward(self, r):
        raise InputError("TypedPairPotential has one potential per type pair: use .pair(a, b)")

    def table(self, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
              create_graph: bool = True) -> PairTable:
        tabs = {k: self.pairs[f"{k[0]}-{k[1]}"].table(n, dtype, device, create_graph) for k in self.type_keys}
        r0 = {(t.r0, t.rc) for t in tabs.values()}
        if len(r0) != 1:
            raise InputError("TypedPairPotential: the type-pair potentials must share r_table_min and r_cut")
        nt = self.n_types
        rows = [tabs[tuple(sorted((a, b)))] for a in range(nt) for b in range(nt)]
        return PairTable.stack(rows)

    def evaluate(self, r, temperature=None):  # pragma: no cover - see pair()
        raise InputError("TypedPairPotential: evaluate one type pair, e.g. pot.pair(0, 1).evaluate(r)")

    def config(self) -> dict:
        return {**super().config(), "pairs": {f"{a}-{b}": self.pairs[f"{a}-{b}"].config() for a, b in self.type_keys}}


class TabulatedPotential(PairPotential):
    """Fixed potential from values ``u`` at points ``r`` (natural cubic spline), then switched off.

    Points below ``r[0]`` continue linearly with the spline slope at ``r[0]``. Not learnable.
    """

    kind = "table"

    def __init__(self, r: np.ndarray, u: np.ndarray, apply_switch: bool = True, **kw):
        kw.setdefault("r_table_min", float(np.asarray(r)[0]))
        super().__init__(**kw)
        self.apply_switch = bool(apply_switch)
        r, u = np.asarray(r, float), np.asarray(u, float)
        if r.ndim != 1 or r.shape != u.shape or len(r) < 4 or np.any(np.diff(r) <= 0):
            raise InputError("TabulatedPotential: r must be increasing, with u of the same length (>= 4 points)")
        if not np.all(np.isfinite(u)):
            raise InputError("TabulatedPotential: u has non-finite values")
        self.register_buffer("r_knots", torch.tensor(r))
        self.register_buffer("u_knots", torch.tensor(u))

    def _spline(self, r: np.ndarray):
        from scipy.interpolate import CubicSpline

        cs = CubicSpline(self.r_knots.cpu().numpy(), self.u_knots.cpu().numpy(), bc_type="natural")
        r0 = float(self.r_knots[0])
        rr = np.maximum(r, r0)
        u, du = cs(rr), cs(rr, 1)
        u = np.where(r < r0, cs(r0) + cs(r0, 1) * (r - r0), u)
        du = np.where(r < r0, cs(r0, 1), du)
        return u, du

    def config(self) -> dict:
        return {**super().config(), "n_knots": len(self.r_knots), "apply_switch": self.apply_switch}

    def raw(self, r):
        u, _ = self._spline(r.detach().cpu().numpy())
        return torch.as_tensor(u, dtype=r.dtype, device=r.device)

    def table(self, n: int = 2048, dtype: torch.dtype = torch.float64, device=None,
              create_graph: bool = True) -> PairTable:
        r = np.linspace(self.r_table_min, self.r_cut, n)
        u, du = self._spline(r)
        s = smooth_switch(torch.tensor(r), self.r_on, self.r_cut).numpy()
        x = np.clip((r - self.r_on) / (self.r_cut - self.r_on), 0, 1)
        ds = np.where((x > 0) & (x < 1), -30 * x ** 2 * (1 - x) ** 2 / (self.r_cut - self.r_on), 0.0)
        if not self.apply_switch:
            s, ds = np.ones_like(r), np.zeros_like(r)
        return PairTable(self.r_table_min, self.r_cut, torch.tensor(u * s, dtype=dtype, device=device),
                         torch.tensor(du * s + u * ds, dtype=dtype, device=device))


def build_potential(config: dict) -> PairPotential:
    """Instantiate a potential from :meth:`PairPotential.config` output (state dict loaded separately)."""
    c = dict(config)
    kind = c.pop("kind", None)
    if kind == "lj":
        return LennardJones(**c)
    if kind == "neural":
        return NeuralPairPotential(**c)
    if kind == "entropic":
        return EntropicPairPotential(**c)
    if kind == "typed":
        pairs = c.pop("pairs")
        return TypedPairPotential({tuple(int(v) for v in k.split("-")): build_potential(v) for k, v in pairs.items()},
                                  **c)
    if kind == "table":
        n = int(c.pop("n_knots"))
        return TabulatedPotential(np.linspace(1, 2, n), np.zeros(n), **c)
    raise InputError(f"unknown potential kind {kind!r} (expected 'lj', 'neural', 'entropic', 'typed' or 'table')")


def save_model(pot: PairPotential, path: str | Path) -> None:
    """Save a potential (config + state dict) to a ``.pt`` file, atomically."""
    cfg = pot.config()
    if isinstance(pot, TabulatedPotential):
        cfg["n_knots"] = len(pot.r_knots)
        cfg["apply_switch"] = pot.apply_switch
    payload = {"format": "cgworkbench-diffsim-potential", "config_json": json.dumps(cfg),
               "state_dict": {k: v.detach().cpu() for k, v in pot.state_dict().items()}}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path) -> PairPotential:
    """Load a potential written by :func:`save_model` (safe: ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a readable diffsim potential file ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != "cgworkbench-diffsim-potential":
        raise InputError(f"{path}: not a cgworkbench diffsim potential (missing format tag)")
    pot = build_potential(json.loads(payload["config_json"]))
    pot.load_state_dict(payload["state_dict"])
    return pot


def write_table(pot: PairPotential, path: str | Path, n: int = 1001, r_min: float | None = None) -> None:
    """Write u(r) and f(r) = -du/dr on ``n`` points up to the cutoff as ``.npz`` or ``.csv`` (reduced units)."""
    path = Path(path)
    r = np.linspace(r_min if r_min is not None else pot.r_table_min, pot.r_cut, n)
    u, du = pot.evaluate(r)
    if path.suffix == ".npz":
        save_npz(path, r=r, u=u, f=-du, config_json=np.array(json.dumps(pot.config())))
    elif path.suffix == ".csv":
        with atomic_path(path) as tmp:
            np.savetxt(tmp, np.column_stack([r, u, -du]), delimiter=",", header="r,u,f (reduced LJ units)",
                       comments="# ", fmt="%.10g")
    else:
        raise InputError(f"{path}: table format must be .npz or .csv")


def read_table(path: str | Path) -> TabulatedPotential:
    """Read a table written by :func:`write_table` (or any .npz with r, u / .csv with r,u columns)."""
    path = Path(path)
    if path.suffix == ".npz":
        d = load_npz(path)
        if "r" not in d or "u" not in d:
            raise InputError(f"{path}: expected arrays 'r' and 'u'")
        r, u = d["r"], d["u"]
        cfg = json.loads(str(d["config_json"])) if "config_json" in d else {}
    elif path.suffix == ".csv":
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            a = np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError as e:
            raise InputError(f"{path}: expected numeric columns r,u[,f] ({e})") from e
        if a.shape[1] < 2:
            raise InputError(f"{path}: expected at least two columns r,u")
        r, u, cfg = a[:, 0], a[:, 1], {}
    else:
        raise InputError(f"{path}: table format must be .npz or .csv")
    kw = {k: cfg[k] for k in ("r_cut", "r_on") if k in cfg}
    kw.setdefault("r_cut", float(r[-1]))
    kw.setdefault("r_on", float(r[-1]) - 0.3)
    return TabulatedPotential(r, u, apply_switch=False, **kw)


def well(pot: PairPotential, r_lo: float = 0.8, n: int = 4001) -> dict[str, float]:
    """Position ``r_min`` and depth ``u_min`` of the potential's minimum on [r_lo, r_cut]."""
    r = np.linspace(r_lo, pot.r_cut, n)
    u, _ = pot.evaluate(r)
    k = int(np.argmin(u))
    return {"r_min": float(r[k]), "u_min": float(u[k])}


def potential_error(pot: PairPotential, ref: PairPotential, r_lo: float = 0.95, n: int = 1000) -> dict[str, float]:
    """Well position / depth errors and the mean |u - u_ref| on [r_lo, r_cut] against a reference."""
    a, b = well(pot), well(ref)
    r = np.linspace(r_lo, min(pot.r_cut, ref.r_cut), n)
    return {"r_min": a["r_min"], "u_min": a["u_min"], "r_min_error": a["r_min"] - b["r_min"],
            "depth_error": a["u_min"] - b["u_min"],
            "u_mae": float(np.abs(pot.evaluate(r)[0] - ref.evaluate(r)[0]).mean())}
