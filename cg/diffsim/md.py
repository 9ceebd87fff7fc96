"""Differentiable molecular dynamics of pair-potential fluids (one or several particle types) in periodic cubic boxes.

Reduced LJ units throughout (epsilon = sigma = m = k_B = 1; see :mod:`cg.diffsim.units`).

Design
------
* Many systems at once: positions ``x`` have shape (B, N, 3); each system b has its own cubic box
  length ``box[b]`` (so its own density) and its own bath temperature ``temperature[b]``.
* The pair potential enters the integrator as a :class:`PairTable` (:mod:`cg.diffsim.table`): node values u_k and derivatives
  u'_k on a uniform grid, interpolated by cubic Hermite polynomials. Energy and force come from the
  same piecewise cubic, so forces are exactly -grad(energy) (good NVE energy conservation), and
  gradients flow from positions back to the node values, hence to the parameters of whatever
  produced the table (a neural potential, an LJ prior, an IBI table). A learnable potential is
  tabulated once per optimisation step, so the MD step costs the same for every potential.
  A *table set* holds several potentials on one grid: one per particle-type pair (mixtures) and/or
  one per system (state-dependent potentials such as u(r; T)), picked per pair by an index.
* Neighbours: a Verlet list with a skin, built under ``no_grad`` (all pairs in chunks for small
  systems, a cell list for N >= 1000) and rebuilt when any particle moved more than half the skin. Distances use the minimum image and are
  differentiable in the positions.
* Integrator: BAOAB Langevin (velocity Verlet when ``friction == 0``, i.e. NVE), or velocity Verlet
  with a Nosé–Hoover chain per system (``thermostat="nhc"``, deterministic). All operations are
  plain torch ops, so a window of steps can be back-propagated (truncated backpropagation: the
  state is detached between windows, see :meth:`Simulation.detach`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from forcefield.errors import InputError

from .table import PairTable, table_from_function  # noqa: F401  (re-exported: the MD's table API)


class NeighbourList:
    """Verlet neighbour list for B systems of N particles in cubic boxes (pairs i < j within a system).

    Parameters
    ----------
    cutoff : the largest distance any consumer needs (potential cutoff, RDF range).
    skin : extra margin; the list stays valid until a particle moved more than skin/2.
    cell_threshold : systems with at least this many particles (and 3 or more cells of side >= cutoff+skin
        per box edge) are listed with cell lists, O(N); smaller ones by all pairs in chunks, O(N^2),
        which is faster there.
    """

    def __init__(self, cutoff: float, skin: float = 0.3, chunk: int = 2_000_000, cell_threshold: int = 1000):
        self.cutoff, self.skin, self.chunk = float(cutoff), float(skin), int(chunk)
        self.cell_threshold = int(cell_threshold)
        self.i = self.j = self.b = None
        self.x_ref: torch.Tensor | None = None
        self.n_builds = 0

    @torch.no_grad()
    def build(self, x: torch.Tensor, box: torch.Tensor) -> None:
        B, N, _ = x.shape
        if bool((box < 2 * (self.cutoff + self.skin)).any()):
            raise InputError(f"NeighbourList: box length(s) {box.tolist()} must be at least twice cutoff+skin "
                             f"= {2 * (self.cutoff + self.skin):.3f} (minimum image); use more particles")
        rl2 = (self.cutoff + self.skin) ** 2
        frac = (x.detach() / box[:, None, None]).float()  # fractional coordinates, float32 is plenty here
        rl = self.cutoff + self.skin
        if N >= self.cell_threshold and bool((box >= 3 * rl).all()):
            ii, jj, bb = [], [], []
            for b in range(B):
                i, j = _cell_pairs(frac[b], float(box[b]), rl)
                ii.append(b * N + i)
                jj.append(b * N + j)
                bb.append(torch.full_like(i, b))
            self.i, self.j, self.b = torch.cat(ii), torch.cat(jj), torch.cat(bb)
            self.x_ref = x.detach().clone()
            self.n_builds += 1
            return
        L2 = (box.float() ** 2)[:, None, None]
        rows_per = max(1, self.chunk // max(1, B * N))
        ii, jj, bb = [], [], []
        jidx = torch.arange(N, device=x.device)
        for s in range(0, N, rows_per):
            e = min(N, s + rows_per)
            d = frac[:, None, :, :] - frac[:, s:e, None, :]  # (B, rows, N, 3)
            d = d - torch.round(d)
            d2 = (d * d).sum(-1) * L2
            mask = (d2 < rl2) & (jidx[None, None, :] > torch.arange(s, e, device=x.device)[None, :, None])
            b, r, c = torch.nonzero(mask, as_tuple=True)
            ii.append(b * N + r + s)
            jj.append(b * N + c)
            bb.append(b)
        self.i, self.j, self.b = torch.cat(ii), torch.cat(jj), torch.cat(bb)
        self.x_ref = x.detach().clone()
        self.n_builds += 1

    def update(self, x: torch.Tensor, box: torch.Tensor) -> bool:
        """Rebuild when needed; returns True when the list was rebuilt."""
        if self.x_ref is None or self.x_ref.shape != x.shape:
            self.build(x, box)
            return True
        with torch.no_grad():
            disp = (x.detach() - self.x_ref).norm(dim=-1).max()
        if float(disp) > 0.5 * self.skin:
            self.build(x, box)
            return True
        return False


def _cell_pairs(frac: torch.Tensor, L: float, rl: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i < j) closer than ``rl`` among fractional positions (N, 3) in a cubic box of side ``L``,
    by a cell list with at least 3 cells per edge (each pair of neighbouring cells is visited twice and
    kept once by i < j)."""
    dev = frac.device
    N = frac.shape[0]
    nc = int(L // rl)
    f = frac - torch.floor(frac)
    c3 = torch.clamp((f * nc).long(), 0, nc - 1)
    cid = (c3[:, 0] * nc + c3[:, 1]) * nc + c3[:, 2]
    order = torch.argsort(cid)
    cs = cid[order]
    counts = torch.bincount(cs, minlength=nc ** 3)
    occ = int(counts.max())
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(N, device=dev) - start[cs]
    table = torch.full((nc ** 3, occ), -1, dtype=torch.long, device=dev)
    table[cs, rank] = order
    ar = torch.arange(nc, device=dev)
    cells = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
    o = torch.arange(-1, 2, device=dev)
    off = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    nb = (cells[:, None, :] + off[None]) % nc
    nbid = (nb[..., 0] * nc + nb[..., 1]) * nc + nb[..., 2]  # (cells, 27)
    a = table[:, None, :, None]  # (cells, 1, occ, 1)
    b = table[nbid][:, :, None, :]  # (cells, 27, 1, occ)
    mask = (a >= 0) & (b >= 0) & (a < b)
    i = a.expand_as(mask)[mask]
    j = b.expand_as(mask)[mask]
    d = frac[j] - frac[i]
    d = d - torch.round(d)
    keep = (d * d).sum(-1) * (L * L) < rl * rl
    return i[keep], j[keep]


@dataclass
class PairData:
    """Pair geometry of one MD step: separation vectors ``d`` = x_j - x_i (min. image), distances ``r``,
    system index ``b`` of each pair, the batch shape (B, N), and the flat particle indices ``i``, ``j``
    (into B*N) of each pair."""

    d: torch.Tensor
    r: torch.Tensor
    b: torch.Tensor
    B: int
    N: int
    i: torch.Tensor | None = None
    j: torch.Tensor | None = None


def pair_data(x: torch.Tensor, box: torch.Tensor, nl: NeighbourList) -> PairData:
    """Differentiable minimum-image pair vectors and distances over the neighbour list."""
    B, N, _ = x.shape
    xf = x.reshape(B * N, 3)
    L = box[nl.b][:, None]
    d = xf[nl.j] - xf[nl.i]
    d = d - L * torch.round(d.detach() / L)
    r = torch.sqrt((d * d).sum(-1))
    return PairData(d=d, r=r, b=nl.b, B=B, N=N, i=nl.i, j=nl.j)


def table_rows(table: PairTable, pd: PairData, types: torch.Tensor | None = None, n_types: int = 1,
               table_index: torch.Tensor | None = None) -> torch.Tensor | None:
    """Row of a table set used by each pair (None for a single table).

    A table set has K = n_blocks * per rows: ``table_index[b]`` (B,) picks the block of system b
    (one block when None), and inside a block ``per`` is 1 (one potential for all pairs) or
    ``n_types**2`` (row t_i * n_types + t_j for particle types ``types`` (B*N,), symmetric).
    """
    if table.u.dim() == 1:
        return None
    K = table.n_tables
    n_blocks = 1 if table_index is None else int(table_index.max()) + 1
    per = K // n_blocks
    if per * n_blocks != K or per not in (1, n_types * n_types):
        raise InputError(f"PairTable set with {K} rows does not fit {n_blocks} block(s) of 1 or {n_types}^2 "
                         f"type-pair rows")
    idx = torch.zeros_like(pd.b) if table_index is None else table_index[pd.b] * per
    if per > 1:
        t = types if types is not None else torch.zeros(pd.B * pd.N, dtype=torch.long, device=pd.b.device)
        idx = idx + t[pd.i] * n_types + t[pd.j]
    return idx


def energy_forces(x: torch.Tensor, box: torch.Tensor, nl: NeighbourList, table: PairTable,
                  types: torch.Tensor | None = None, n_types: int = 1, table_index: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, PairData]:
    """Potential energies (B,), forces (B, N, 3) and the pair data at positions ``x``.

    ``types`` (B*N,), ``n_types`` and ``table_index`` (B,) select rows of a table set (see :func:`table_rows`).
    """
    pd = pair_data(x, box, nl)
    u, du = table(pd.r, table_rows(table, pd, types, n_types, table_index))
    fj = (-du / pd.r)[:, None] * pd.d  # force on j; i gets the opposite
    B, N = pd.B, pd.N
    F = torch.zeros(B * N, 3, dtype=x.dtype, device=x.device)
    F = F.index_add(0, torch.cat([nl.j, nl.i]), torch.cat([fj, -fj]))
    E = torch.zeros(B, dtype=x.dtype, device=x.device).index_add(0, pd.b, u)
    return E, F.reshape(B, N, 3), pd


def lattice_positions(n: int, box: float, rng: np.random.Generator, jitter: float = 0.02) -> np.ndarray:
    """``n`` points on an fcc lattice filling a cubic box of side ``box`` (random sites if not 4k^3)."""
    k = math.ceil((n / 4) ** (1 / 3))
    a = box / k
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    g = np.stack(np.meshgrid(np.arange(k), np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 1, 3)
    sites = ((g + base[None]) * a).reshape(-1, 3)
    if len(sites) > n:
        sites = sites[np.sort(rng.choice(len(sites), n, replace=False))]
    return sites + rng.normal(scale=jitter * a, size=sites.shape)


class Simulation:
    """B periodic systems of N unit-mass particles, integrated with BAOAB Langevin dynamics.

    Parameters
    ----------
    n_particles : particles per system.
    densities, temperatures : per system (length B), reduced units.
    cutoff : distance the neighbour list must cover (max of potential cutoff and RDF range + tails).
    dt : time step (reduced; 0.005 is standard for LJ).
    friction : Langevin friction gamma (1/time); 0 gives NVE velocity Verlet.
    thermostat : ``"langevin"`` (BAOAB with ``friction``) or ``"nhc"`` (Nosé–Hoover chain of
        ``nhc_chain`` thermostats with time constant ``nhc_tau``; ``friction`` is then ignored).
    skin : neighbour-list skin.
    seed : seeds the lattice, the initial velocities and the thermostat noise.
    types : particle types, (N,) for every system or (B, N) per system (integers 0 .. n_types-1; default:
        all 0). With a table set of n_types^2 rows per block, pair (i, j) uses row t_i * n_types + t_j.
    n_types : number of particle types (default: max(types) + 1).
    device, dtype : torch device and dtype (float64 by default for clean gradients and energy checks).
    """

    def __init__(self, n_particles: int, densities, temperatures, cutoff: float, dt: float = 0.005,
                 friction: float = 1.0, skin: float = 0.3, seed: int = 0, device=None,
                 dtype: torch.dtype = torch.float64, thermostat: str = "langevin", nhc_tau: float = 0.5,
                 nhc_chain: int = 3, types=None, n_types: int | None = None):
        dens = np.atleast_1d(np.asarray(densities, float))
        temps = np.atleast_1d(np.asarray(temperatures, float))
        if len(temps) == 1 and len(dens) > 1:
            temps = np.repeat(temps, len(dens))
        if len(dens) != len(temps):
            raise InputError(f"Simulation: {len(dens)} densities but {len(temps)} temperatures")
        if (dens <= 0).any() or (temps < 0).any():
            raise InputError(f"Simulation: densities must be > 0 and temperatures >= 0, got {dens}, {temps}")
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.N, self.B = int(n_particles), len(dens)
        self.dt, self.friction = float(dt), float(friction)
        if thermostat not in ("langevin", "nhc"):
            raise InputError(f"Simulation: thermostat must be 'langevin' or 'nhc', got {thermostat!r}")
        if nhc_chain < 1 or nhc_tau <= 0:
            raise InputError(f"Simulation: need nhc_chain >= 1 and nhc_tau > 0, got {nhc_chain}, {nhc_tau}")
        if thermostat == "nhc" and (temps <= 0).any():
            raise InputError(f"Simulation: the Nosé–Hoover chain needs temperatures > 0, got {temps}")
        self.thermostat, self.nhc_tau = thermostat, float(nhc_tau)
        self.box = torch.tensor((self.N / dens) ** (1 / 3), dtype=dtype, device=self.device)
        self.temperature = torch.tensor(temps, dtype=dtype, device=self.device)
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))
        rng = np.random.default_rng(seed)
        x = np.stack([lattice_positions(self.N, float(L), rng) for L in self.box.cpu().numpy()])
        self.x = torch.tensor(x, dtype=dtype, device=self.device)
        self.v = self._maxwell()
        self.nl = NeighbourList(cutoff, skin)
        self.steps_done = 0
        if types is None:
            t = np.zeros((self.B, self.N), dtype=np.int64)
        else:
            t = np.asarray(types)
            if t.ndim == 1:
                t = np.broadcast_to(t, (self.B, len(t)))
            if t.shape != (self.B, self.N) or not np.issubdtype(t.dtype, np.integer) or (t < 0).any():
                raise InputError(f"Simulation: types must be non-negative integers of shape ({self.N},) or "
                                 f"({self.B}, {self.N}), got shape {t.shape}")
        self.n_types = int(n_types) if n_types is not None else int(t.max()) + 1
        if int(t.max()) >= self.n_types:
            raise InputError(f"Simulation: type {int(t.max())} >= n_types={self.n_types}")
        self.types = torch.as_tensor(np.array(t, dtype=np.int64), dtype=torch.long, device=self.device)  # (B, N)
        # Nosé–Hoover chain state per system: positions xi and velocities v_xi of the chain, masses Q
        self.xi = torch.zeros(self.B, nhc_chain, dtype=dtype, device=self.device)
        self.v_xi = torch.zeros(self.B, nhc_chain, dtype=dtype, device=self.device)
        self.n_dof = 3 * self.N - 3
        q = self.temperature[:, None] * self.nhc_tau ** 2 * torch.ones(self.B, nhc_chain, dtype=dtype,
                                                                        device=self.device)
        q[:, 0] *= self.n_dof
        self.q_nhc = q

    def _nhc_half(self, v: torch.Tensor, v_xi: torch.Tensor, xi: torch.Tensor):
        """Propagate the Nosé–Hoover chains by dt/2 (Martyna–Tuckerman–Klein splitting), scaling ``v``."""
        M = v_xi.shape[1]
        kT, Q, dt = self.temperature, self.q_nhc, self.dt
        K2 = (v * v).sum((1, 2))  # twice the kinetic energy
        vx = list(v_xi.unbind(1))

        def force(k, K2):
            if k == 0:
                return (K2 - self.n_dof * kT) / Q[:, 0]
            return (Q[:, k - 1] * vx[k - 1] ** 2 - kT) / Q[:, k]

        vx[M - 1] = vx[M - 1] + 0.25 * dt * force(M - 1, K2)
        for k in range(M - 2, -1, -1):
            e = torch.exp(-0.125 * dt * vx[k + 1])
            vx[k] = (vx[k] * e + 0.25 * dt * force(k, K2)) * e
        scale = torch.exp(-0.5 * dt * vx[0])
        v = v * scale[:, None, None]
        K2 = K2 * scale * scale
        xi = xi + 0.5 * dt * torch.stack(vx, 1)
        for k in range(M - 1):
            e = torch.exp(-0.125 * dt * vx[k + 1])
            vx[k] = (vx[k] * e + 0.25 * dt * force(k, K2)) * e
        vx[M - 1] = vx[M - 1] + 0.25 * dt * force(M - 1, K2)
        return v, torch.stack(vx, 1), xi

    def conserved_energy(self, table: PairTable, table_index=None) -> torch.Tensor:
        """Potential + kinetic energy per system, plus the Nosé–Hoover chain energy when ``thermostat='nhc'``
        (conserved by the NVE and NHC dynamics)."""
        U, K = self.energy(table, table_index)
        if self.thermostat != "nhc":
            return U + K
        kT = self.temperature
        chain = 0.5 * (self.q_nhc * self.v_xi ** 2).sum(1) + self.n_dof * kT * self.xi[:, 0] \
            + kT * self.xi[:, 1:].sum(1)
        return U + K + chain

    @property
    def volume(self) -> torch.Tensor:
        return self.box ** 3

    def _noise(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, dtype=self.dtype).to(self.device)

    def _maxwell(self) -> torch.Tensor:
        v = self._noise((self.B, self.N, 3)) * torch.sqrt(self.temperature)[:, None, None]
        return v - v.mean(1, keepdim=True)

    def kinetic(self, v: torch.Tensor | None = None) -> torch.Tensor:
        v = self.v if v is None else v
        return 0.5 * (v * v).sum((1, 2))

    def instantaneous_temperature(self) -> torch.Tensor:
        return 2 * self.kinetic() / (3 * self.N - 3)

    def detach(self) -> None:
        """Cut the autograd history (start of a new truncated-backpropagation window)."""
        self.x, self.v = self.x.detach(), self.v.detach()
        self.xi, self.v_xi = self.xi.detach(), self.v_xi.detach()

    def run(self, table: PairTable, n_steps: int, observe: Callable[[int, torch.Tensor, torch.Tensor, PairData],
                                                                     None] | None = None,
            observe_every: int = 1, grad: bool = True, table_index=None) -> None:
        """Advance ``n_steps`` BAOAB steps with the potential ``table``.

        ``table`` may be a table set (see :class:`PairTable`): ``table_index`` (B,) then gives the block
        of each system (e.g. a temperature-dependent potential tabulated per state), and blocks of
        n_types^2 rows hold one potential per type pair.

        ``observe(step, x, v, pair_data)`` is called every ``observe_every`` steps after the step
        (with differentiable tensors when ``grad``). With ``grad`` the trajectory keeps its autograd
        graph from the current (usually detached) state, so losses on observations can be
        back-propagated to the table.
        """
        table = table.to(self.device, self.dtype)
        ti = None if table_index is None else torch.as_tensor(table_index, dtype=torch.long, device=self.device)
        if ti is not None and ti.shape != (self.B,):
            raise InputError(f"Simulation.run: table_index must have shape ({self.B},), got {tuple(ti.shape)}")
        kw = dict(types=self.types.reshape(-1), n_types=self.n_types, table_index=ti)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            h = 0.5 * self.dt
            c1 = math.exp(-self.friction * self.dt)
            c2 = math.sqrt(max(0.0, 1 - c1 * c1))
            vstd = torch.sqrt(self.temperature)[:, None, None]
            x, v = self.x, self.v
            nhc = self.thermostat == "nhc"
            v_xi, xi = self.v_xi, self.xi
            self.nl.update(x, self.box)
            _, F, _ = energy_forces(x, self.box, self.nl, table, **kw)
            for s in range(1, n_steps + 1):
                if nhc:
                    v, v_xi, xi = self._nhc_half(v, v_xi, xi)
                v = v + h * F
                x = x + h * v
                if self.friction > 0 and not nhc:
                    v = c1 * v + c2 * vstd * self._noise(v.shape)
                x = x + h * v
                self.nl.update(x, self.box)
                _, F, pd = energy_forces(x, self.box, self.nl, table, **kw)
                v = v + h * F
                if nhc:
                    v, v_xi, xi = self._nhc_half(v, v_xi, xi)
                if observe is not None and s % observe_every == 0:
                    observe(s, x, v, pd)
            self.x, self.v = x, v
            self.v_xi, self.xi = v_xi, xi
            self.steps_done += n_steps

    def energy(self, table: PairTable, table_index=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(potential, kinetic) energies per system at the current state."""
        self.nl.update(self.x, self.box)
        ti = None if table_index is None else torch.as_tensor(table_index, dtype=torch.long, device=self.device)
        E, _, _ = energy_forces(self.x, self.box, self.nl, table.to(self.device, self.dtype), self.types.reshape(-1),
                                self.n_types, ti)
        return E, self.kinetic()
