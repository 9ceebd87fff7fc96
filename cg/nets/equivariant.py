"""Equivariant message passing on e3nn (NequIP/MACE-style interactions, written here from the papers).

Bead features are e3nn irreps (scalars ``0e``, pseudoscalars ``0o``, vectors ``1o``, pseudovectors ``1e``,
...). One :class:`Interaction`:

* edge attributes: spherical harmonics ``Y(r̂_ij)`` up to ``lmax`` of the unit edge vector, and a Bessel
  radial basis of ``|r_ij|`` times a polynomial envelope that vanishes smoothly at the cutoff;
* message from j to i: a tensor product ``h_j ⊗ Y(r̂_ij)`` (``uvu`` paths into the hidden irreps) whose
  path weights come from an MLP of the radial basis (zero beyond the cutoff, as the MLP has no biases);
* aggregation: sum over neighbours / sqrt(``avg_neighbours``); update: linear maps of the aggregate and a
  self-connection, then a gated non-linearity (e3nn ``Gate``: SiLU on scalars, tanh on pseudoscalars,
  sigmoid gates on l > 0 irreps), with a residual connection when the irreps allow it.

:class:`EquivariantCG` stacks interactions over bead-type embeddings and reads out an invariant energy
per bead (a linear map to ``0e`` channels, an MLP), summed over beads: ``E(x)`` (B,) in kcal/mol; forces
``-∂E/∂x`` come from autograd in :class:`cg.potential.CGPotential`. With ``chiral=True`` the readout
also sees pseudoscalars (``0o``, from a tensor product of the features with themselves), so the energy is
invariant under rotations but can tell a structure from its mirror image (L from D); with
``chiral=False`` it is E(3)-invariant. The graph is a cutoff graph (:func:`cg.nets.graph.radius_graph`),
so the cost grows with the number of neighbours. Networks run in float32 by default and follow
``.to(device, dtype)``; positions of any dtype are accepted.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from .graph import Graph, radius_graph

__all__ = ["BesselBasis", "Interaction", "EquivariantCG", "EquivariantStack"]


class BesselBasis(nn.Module):
    """``sqrt(2/c) sin(kπr/c)/r`` for k = 1..n, times the polynomial envelope (p = 6) of DimeNet/NequIP."""

    def __init__(self, n: int, cutoff: float, p: int = 6) -> None:
        super().__init__()
        self.cutoff, self.p = float(cutoff), p
        self.register_buffer("k", torch.arange(1, n + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        u = (r / self.cutoff).clamp(max=1.0)
        p = self.p
        env = 1 - (p + 1) * (p + 2) / 2 * u**p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
        return env * (r < self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        b = math.sqrt(2.0 / self.cutoff) * torch.sin(self.k * r[:, None]) / r[:, None]
        return b * self.envelope(r)[:, None]


def _acts(irreps: o3.Irreps) -> list:
    return [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in irreps]


class Interaction(nn.Module):
    """One convolution + gate: features ``irreps_in`` -> (about) ``irreps_hidden`` (see module docstring)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, n_rbf: int,
                 radial_hidden: int, avg_neighbours: float) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        hidden = o3.Irreps(irreps_hidden)
        mid, instr = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in hidden:
                        instr.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        mid_sorted, perm, _ = mid.sort()
        instr = [(a, b, perm[c], m, t) for a, b, c, m, t in instr]
        self.lin1 = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, mid_sorted, instr, shared_weights=False,
                                   internal_weights=False)
        self.radial = FullyConnectedNet([n_rbf, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        reach = {ir for _, ir in mid_sorted}
        scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0 and ir in reach])
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0 and ir in reach])
        gates = o3.Irreps([(m, "0e") for m, _ in gated])
        self.gate = Gate(scalars, _acts(scalars), gates, [torch.sigmoid] * len(gates), gated)
        self.lin2 = o3.Linear(mid_sorted.simplify(), self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out
        self.residual = self.irreps_out == self.irreps_in
        self.norm = 1.0 / math.sqrt(max(float(avg_neighbours), 1.0))

    def forward(self, h: torch.Tensor, sh: torch.Tensor, rbf: torch.Tensor, g: Graph) -> torch.Tensor:
        msg = self.tp(self.lin1(h)[g.src], sh, self.radial(rbf))
        agg = msg.new_zeros(h.shape[0], msg.shape[1]).index_add_(0, g.dst, msg) * self.norm
        out = self.gate(self.lin2(agg) + self.self_connection(h))
        return h + out if self.residual else out


class EquivariantStack(nn.Module):
    """Embedding of node scalars + ``n_layers`` :class:`Interaction` blocks on a cutoff graph.

    ``forward(x, s0)`` with positions x (B, n, 3) and initial invariant node scalars s0 (B*n, n_scalars)
    returns node features (B*n, irreps_out.dim) and the graph used.
    """

    def __init__(self, n_scalars: int, hidden_irreps: str, lmax: int, n_layers: int, cutoff: float, n_rbf: int,
                 radial_hidden: int, avg_neighbours: float, exclude: np.ndarray | None = None) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.rbf = BesselBasis(n_rbf, cutoff)
        self.register_buffer("exclude", torch.as_tensor(np.zeros((0, 2)) if exclude is None else np.asarray(exclude),
                                                        dtype=torch.long).reshape(-1, 2))
        irreps = o3.Irreps(f"{n_scalars}x0e")
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            blk = Interaction(irreps, o3.Irreps(hidden_irreps), self.irreps_sh, n_rbf, radial_hidden, avg_neighbours)
            self.layers.append(blk)
            irreps = blk.irreps_out
        self.irreps_out = irreps

    def forward(self, x: torch.Tensor, s0: torch.Tensor, graph: Graph | None = None) -> tuple[torch.Tensor, Graph]:
        g = radius_graph(x, self.cutoff, self.exclude if len(self.exclude) else None) if graph is None else graph
        vec = g.vectors(x)
        r = vec.norm(dim=-1)
        sh, rbf = self.sh(vec), self.rbf(r)
        h = s0
        for blk in self.layers:
            h = blk(h, sh, rbf, g)
        return h, g


class EquivariantCG(nn.Module):
    """Equivariant message-passing energy over n beads with bead types (NequIP/MACE style, on e3nn).

    Parameters
    ----------
    types : (n,) integer bead types (0 .. n_types-1); beads of one type share an embedding.
    hidden_irreps : e3nn irreps of the hidden bead features (e.g. ``"32x0e + 8x0o + 8x1o + 8x1e"``).
    lmax : highest degree of the edge spherical harmonics.
    n_layers, n_rbf, radial_hidden, readout_hidden : depth and widths.
    cutoff : Å; pairs farther apart exchange no messages (smooth envelope).
    avg_neighbours : normalisation of the neighbour sum (about the mean number of neighbours).
    chiral : read out pseudoscalars too (rotation-invariant, not mirror-invariant energy).
    exclude : optional (P, 2) bead pairs that exchange no messages.
    n_types : number of bead types (default: ``max(types) + 1``).
    """

    def __init__(self, types: np.ndarray | torch.Tensor, hidden_irreps: str = "32x0e + 8x0o + 8x1o + 8x1e",
                 lmax: int = 2, n_layers: int = 2, cutoff: float = 10.0, n_rbf: int = 8, radial_hidden: int = 32,
                 readout_hidden: int = 32, avg_neighbours: float = 10.0, chiral: bool = True,
                 exclude: np.ndarray | None = None, n_types: int | None = None) -> None:
        super().__init__()
        types = torch.as_tensor(np.asarray(types), dtype=torch.long)
        n_types = int(types.max()) + 1 if n_types is None else int(n_types)
        self.config: dict[str, Any] = {
            "kind": "e3nn", "hidden_irreps": str(o3.Irreps(hidden_irreps)), "lmax": int(lmax), "n_layers": int(n_layers),
            "cutoff": float(cutoff), "n_rbf": int(n_rbf), "radial_hidden": int(radial_hidden),
            "readout_hidden": int(readout_hidden), "avg_neighbours": float(avg_neighbours), "chiral": bool(chiral),
            "exclude": None if exclude is None else np.asarray(exclude, dtype=int).reshape(-1, 2).tolist(),
            "n_types": n_types}
        self.register_buffer("types", types)
        n0 = o3.Irreps(hidden_irreps).count("0e") or 16
        self.embed = nn.Embedding(n_types, n0)
        self.stack = EquivariantStack(n0, hidden_irreps, lmax, n_layers, cutoff, n_rbf, radial_hidden,
                                      avg_neighbours, exclude)
        irreps = self.stack.irreps_out
        self.read_even = o3.Linear(irreps, o3.Irreps(f"{readout_hidden}x0e"))
        n_read = readout_hidden
        self.read_odd = None
        if chiral:
            # pseudoscalars from products of the features (e.g. 1o·1e, 0e·0o): a chiral, rotation-invariant input
            self.read_odd = o3.FullyConnectedTensorProduct(irreps, irreps, o3.Irreps(f"{readout_hidden}x0o"))
            n_read += readout_hidden
        self.out = nn.Sequential(nn.Linear(n_read, readout_hidden), nn.SiLU(), nn.Linear(readout_hidden, 1))
        with torch.no_grad():  # start close to zero: the priors carry the initial physics
            self.out[-1].weight.mul_(0.1)
            self.out[-1].bias.zero_()

    @classmethod
    def from_config(cls, types: np.ndarray, config: dict[str, Any]) -> "EquivariantCG":
        c = {k: v for k, v in config.items() if k != "kind"}
        return cls(types, **c)

    def node_energies(self, x: torch.Tensor) -> torch.Tensor:
        """Per-bead energies (B, n) of positions x (B, n, 3) Å (in the module's dtype)."""
        dt = self.embed.weight.dtype
        x = x.to(dt)
        B, n, _ = x.shape
        s0 = self.embed(self.types).repeat(B, 1)
        h, _ = self.stack(x, s0)
        feats = [self.read_even(h)]
        if self.read_odd is not None:
            feats.append(self.read_odd(h, h))
        return self.out(torch.cat(feats, -1)).view(B, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies (B,) in kcal/mol of positions x (B, n, 3) in Å."""
        return self.node_energies(x).sum(-1)
