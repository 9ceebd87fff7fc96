"""Tabulated pair potentials for the differentiable MD (:mod:`cg.diffsim.md`): :class:`PairTable` holds node
values u_k and derivatives u'_k on a uniform grid, interpolated by cubic Hermite polynomials, so energy and
force come from one piecewise cubic (forces exactly -du/dr) and gradients flow back to the node values; a
*table set* holds one potential per particle-type pair and/or per system. :func:`table_from_function`
tabulates any differentiable radial function. Reduced LJ units (:mod:`cg.diffsim.units`).
"""
from __future__ import annotations

from typing import Callable

import torch

from forcefield.errors import InputError


class PairTable:
    """Pair potential tabulated on a uniform grid ``r0 .. rc`` with cubic Hermite interpolation.

    Parameters
    ----------
    r0, rc : first and last grid point (reduced lengths). Beyond ``rc`` the potential is zero (the
        table should end with u = u' = 0 there, e.g. through a smooth switch); below ``r0`` it is
        continued linearly with the slope at ``r0``.
    u, du : (n,) tensors: energies and radial derivatives du/dr at the grid points. They may carry
        autograd history (gradients then flow to whatever produced them). A *table set* has shape
        (K, n): K potentials on the same grid (one per particle-type pair and/or per state), picked per
        pair by an ``index`` (see :meth:`__call__` and :meth:`Simulation.run`).
    """

    def __init__(self, r0: float, rc: float, u: torch.Tensor, du: torch.Tensor):
        if u.shape != du.shape or u.dim() not in (1, 2) or u.shape[-1] < 2:
            raise InputError(f"PairTable: u and du must be (n,) or (K, n) of equal shape, n >= 2, got "
                             f"{tuple(u.shape)}, {tuple(du.shape)}")
        if not rc > r0 > 0:
            raise InputError(f"PairTable: need 0 < r0 < rc, got r0={r0}, rc={rc}")
        self.r0, self.rc, self.u, self.du = float(r0), float(rc), u, du
        self.h = (self.rc - self.r0) / (u.shape[-1] - 1)

    @property
    def n_tables(self) -> int:
        """K for a table set (u of shape (K, n)), 1 for a single table."""
        return 1 if self.u.dim() == 1 else int(self.u.shape[0])

    @property
    def r(self) -> torch.Tensor:
        return torch.linspace(self.r0, self.rc, self.u.shape[-1], dtype=self.u.dtype, device=self.u.device)

    def to(self, device=None, dtype=None) -> "PairTable":
        return PairTable(self.r0, self.rc, self.u.to(device=device, dtype=dtype),
                         self.du.to(device=device, dtype=dtype))

    @staticmethod
    def stack(tables: list["PairTable"]) -> "PairTable":
        """One table set from several tables / table sets on the same grid (rows concatenated in order)."""
        if not tables:
            raise InputError("PairTable.stack: no tables")
        t0 = tables[0]
        for t in tables[1:]:
            if (t.r0, t.rc, t.u.shape[-1]) != (t0.r0, t0.rc, t0.u.shape[-1]):
                raise InputError("PairTable.stack: tables must share r0, rc and the number of points")
        u = torch.cat([t.u.reshape(-1, t.u.shape[-1]) for t in tables])
        du = torch.cat([t.du.reshape(-1, t.du.shape[-1]) for t in tables])
        return PairTable(t0.r0, t0.rc, u, du)

    def _coefficients(self) -> torch.Tensor:
        """Per-interval cubic coefficients ([K,] n-1, 4): e(t) = c0 + c1 t + c2 t^2 + c3 t^3."""
        if getattr(self, "_coef", None) is None:
            u0, u1 = self.u[..., :-1], self.u[..., 1:]
            d0, d1 = self.du[..., :-1] * self.h, self.du[..., 1:] * self.h
            self._coef = torch.stack([u0, d0, -3 * u0 - 2 * d0 + 3 * u1 - d1, 2 * u0 + d0 - 2 * u1 + d1], -1)
        return self._coef

    def __call__(self, r: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies u(r) and derivatives du/dr for distances ``r`` (any shape).

        For a table set, ``index`` (same shape as ``r``, values < K) picks the table of each distance
        (None: table 0).
        """
        coef = self._coefficients()
        n = self.u.shape[-1]
        s = (r - self.r0) / self.h
        k = torch.clamp(torch.floor(s.detach()), 0, n - 2).long()
        t = torch.clamp(s - k, 0.0, 1.0)
        u_first, du_first = self.u[..., 0], self.du[..., 0]
        if coef.dim() == 3:
            if index is None:
                index = torch.zeros_like(k)
            c = coef[index, k]
            u_first, du_first = u_first[index], du_first[index]
        else:
            c = coef[k]  # (..., 4)
        c0, c1, c2, c3 = c.unbind(-1)
        e = c0 + t * (c1 + t * (c2 + t * c3))
        de = (c1 + t * (2 * c2 + 3 * t * c3)) / self.h
        below = r < self.r0  # continue with the tangent line at r0
        if bool(below.any()):
            e = torch.where(below, u_first + du_first * (r - self.r0), e)
            de = torch.where(below, du_first.expand_as(de), de)
        inside = r < self.rc
        zero = torch.zeros((), dtype=e.dtype, device=e.device)
        return torch.where(inside, e, zero), torch.where(inside, de, zero)


def table_from_function(fn: Callable[[torch.Tensor], torch.Tensor], r0: float, rc: float, n: int = 2048,
                        dtype: torch.dtype = torch.float64, device=None, create_graph: bool = True) -> PairTable:
    """Tabulate a differentiable radial function ``fn(r)`` (u and du/dr by autograd) on ``n`` points."""
    r = torch.linspace(r0, rc, n, dtype=dtype, device=device).requires_grad_(True)
    with torch.enable_grad():
        u = fn(r)
        (du,) = torch.autograd.grad(u.sum(), r, create_graph=create_graph)
    if not create_graph:
        u, du = u.detach(), du.detach()
    return PairTable(r0, rc, u.to(dtype), du.to(dtype))
