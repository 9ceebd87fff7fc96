"""Differentiable structural and dynamical observables (reduced LJ units).

* :class:`RDF`: radial distribution function g(r) from a Gaussian-smoothed pair histogram. Each
  pair at distance d adds to bin k the probability mass that a normal distribution N(d, sigma^2)
  puts on that bin, i.e. 0.5 [erf((e_{k+1}-d)/(sqrt2 sigma)) - erf((e_k-d)/(sqrt2 sigma))], so the
  histogram is smooth (differentiable) in the positions. Counts are normalised by the shell volume
  4/3 pi (e_{k+1}^3 - e_k^3) and by the pair density, giving g = 1 for an ideal gas. For mixtures,
  :meth:`RDF.partial_from_pairs` gives the partial g_ab(r) of every type pair a <= b (normalised by
  the number of a-b pairs, so each is 1 for an ideal-gas mixture); the total g(r) of all particles
  seen as one type is :meth:`RDF.from_pairs`.
* :func:`vacf`: velocity autocorrelation function, normalised to 1 at lag 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from forcefield.errors import InputError

from .md import PairData


class RDF:
    """Gaussian-smoothed g(r) on ``n_bins`` bins over [0, r_max].

    Parameters
    ----------
    r_max : upper end of the range (must be below half the box length).
    n_bins : number of bins.
    sigma : Gaussian width (default: one bin width).

    Notes
    -----
    Pairs up to ``r_max + 4 sigma`` contribute (their tails reach the last bins), so a neighbour list
    feeding :meth:`from_pairs` must cover :attr:`reach`.
    """

    def __init__(self, r_max: float = 2.5, n_bins: int = 100, sigma: float | None = None):
        if r_max <= 0 or n_bins < 2:
            raise InputError(f"RDF: need r_max > 0 and n_bins >= 2, got {r_max}, {n_bins}")
        self.r_max, self.n_bins = float(r_max), int(n_bins)
        self.width = self.r_max / self.n_bins
        self.sigma = float(sigma) if sigma else self.width
        self.edges = np.linspace(0.0, self.r_max, self.n_bins + 1)
        self.r = 0.5 * (self.edges[1:] + self.edges[:-1])
        self.shell = 4.0 / 3.0 * math.pi * (self.edges[1:] ** 3 - self.edges[:-1] ** 3)
        self.n_window = int(math.ceil(8 * self.sigma / self.width)) + 2

    @property
    def reach(self) -> float:
        return self.r_max + 4 * self.sigma

    def counts(self, r: torch.Tensor, b: torch.Tensor, n_systems: int) -> torch.Tensor:
        """Smoothed pair counts (n_systems, n_bins) of distances ``r`` belonging to systems ``b``."""
        keep = r < self.reach
        r, b = r[keep], b[keep]
        k0 = torch.floor((r.detach() - 4 * self.sigma) / self.width).long()
        off = torch.arange(self.n_window, device=r.device)
        k = k0[:, None] + off[None, :]  # (P, W) bin indices near each pair
        lo = k.to(r.dtype) * self.width
        s = math.sqrt(2.0) * self.sigma
        w = 0.5 * (torch.erf((lo + self.width - r[:, None]) / s) - torch.erf((lo - r[:, None]) / s))
        valid = (k >= 0) & (k < self.n_bins)
        flat = (b[:, None] * self.n_bins + k.clamp(0, self.n_bins - 1))[valid]
        out = torch.zeros(n_systems * self.n_bins, dtype=r.dtype, device=r.device)
        return out.index_add(0, flat, w[valid]).reshape(n_systems, self.n_bins)

    def normalise(self, counts: torch.Tensor, n_particles: int, volume: torch.Tensor) -> torch.Tensor:
        """g(r) from unordered-pair counts (B, n_bins) of one frame of B systems with volumes (B,)."""
        shell = torch.as_tensor(self.shell, dtype=counts.dtype, device=counts.device)
        ideal = 0.5 * n_particles * (n_particles - 1) / volume.to(counts.dtype)[:, None] * shell[None, :]
        return counts / ideal

    def from_pairs(self, pd: PairData, volume: torch.Tensor) -> torch.Tensor:
        """g(r) (B, n_bins) of one frame from the MD pair data."""
        return self.normalise(self.counts(pd.r, pd.b, pd.B), pd.N, volume)

    def partial_from_pairs(self, pd: PairData, volume: torch.Tensor, types: torch.Tensor, n_types: int
                           ) -> torch.Tensor:
        """Partial g_ab(r) (B, n_types (n_types + 1) / 2, n_bins) of one frame; channels a <= b in the order
        of :func:`type_pairs`. ``types`` (B*N,) are the particle types. Channels without pairs are 0."""
        if pd.i is None or pd.j is None:
            raise InputError("partial RDF: the pair data carry no particle indices")
        ta, tb = types[pd.i], types[pd.j]
        lo, hi = torch.minimum(ta, tb), torch.maximum(ta, tb)
        ch_of = torch.full((n_types, n_types), -1, dtype=torch.long, device=types.device)
        pairs = type_pairs(n_types)
        for c, (a, b) in enumerate(pairs):
            ch_of[a, b] = c
        nch = len(pairs)
        ch = ch_of[lo, hi]
        counts = self.counts(pd.r, pd.b * nch + ch, pd.B * nch).reshape(pd.B, nch, self.n_bins)
        na = torch.stack([(types.reshape(pd.B, pd.N) == a).sum(1) for a in range(n_types)], 1).to(counts.dtype)
        n_pairs = torch.stack([na[:, a] * (na[:, a] - 1) / 2 if a == b else na[:, a] * na[:, b] for a, b in pairs], 1)
        shell = torch.as_tensor(self.shell, dtype=counts.dtype, device=counts.device)
        ideal = (n_pairs / volume.to(counts.dtype)[:, None])[:, :, None] * shell[None, None, :]
        return torch.where(ideal > 0, counts / ideal.clamp_min(1e-300), torch.zeros((), dtype=counts.dtype,
                                                                                     device=counts.device))

    def from_positions(self, x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """g(r) (B, n_bins) of positions (B, N, 3) in cubic boxes (B,) by all pairs (small systems)."""
        if x.dim() == 2:
            x = x[None]
        B, N, _ = x.shape
        box = torch.as_tensor(box, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        if bool((box < 2 * self.r_max).any()):
            raise InputError(f"RDF: r_max={self.r_max} exceeds half the box length {box.min().item() / 2:.3f}")
        i, j = torch.triu_indices(N, N, 1, device=x.device)
        d = x[:, j] - x[:, i]
        d = d - box[:, None, None] * torch.round(d.detach() / box[:, None, None])
        r = torch.sqrt((d * d).sum(-1)).reshape(-1)
        b = torch.arange(B, device=x.device).repeat_interleave(len(i))
        return self.normalise(self.counts(r, b, B), N, box ** 3)


def type_pairs(n_types: int) -> list[tuple[int, int]]:
    """Type pairs (a, b), a <= b, in channel order: (0, 0), (0, 1), ..., (1, 1), ..."""
    return [(a, b) for a in range(n_types) for b in range(a, n_types)]


def vacf(v: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Velocity autocorrelation C(t)/C(0) for velocities (T, B, N, 3), lags 0..max_lag-1, per system (B, max_lag).

    Averaged over particles and time origins; differentiable in ``v``.
    """
    if v.dim() != 4 or max_lag < 1 or max_lag > v.shape[0]:
        raise InputError(f"vacf: need v of shape (T, B, N, 3) and 1 <= max_lag <= T, got {tuple(v.shape)}, {max_lag}")
    T = v.shape[0]
    c = torch.stack([(v[: T - t] * v[t:]).sum(-1).mean((0, 2)) for t in range(max_lag)], -1)
    return c / c[:, :1]
