"""Cutoff graphs (neighbour lists) over batched bead positions, shared by the CG networks.

Positions ``x`` (B, n, 3) in Å: B frames of the same n beads. Nodes are flattened to ``B * n`` (frame-major:
node ``b * n + i`` is bead i of frame b), and an edge list ``(src, dst)`` of flat node indices holds every
ordered pair of distinct beads of the same frame closer than ``cutoff`` (both directions; messages flow
src -> dst). Two builders give the same set of edges:

* ``"dense"``: all pairs of one frame at a time (chunks of frames bound the memory); fast for small n;
* ``"cells"``: a cell list (cubes of side ``cutoff``; every bead is compared with the beads of its own
  and the 26 adjacent cells), so the work grows with the number of neighbours, not with n².

Both are plain torch (``argsort``, ``searchsorted``, ``repeat_interleave``) and run on any device. The graph
is a function of positions only through the neighbour set: indices carry no gradient, and the networks
compute distances from ``x`` afterwards (a smooth envelope that vanishes at the cutoff keeps energies
continuous as pairs enter and leave).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Graph", "radius_graph", "DENSE_MAX_BEADS"]

#: above this bead count ``method="auto"`` uses the cell list
DENSE_MAX_BEADS = 192

_OFFSETS = torch.tensor([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=torch.long)


@dataclass
class Graph:
    """Directed edges (src -> dst) between flat nodes of B frames of n beads each."""

    src: torch.Tensor
    dst: torch.Tensor
    n_frames: int
    n_beads: int

    @property
    def n_edges(self) -> int:
        return int(self.src.numel())

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Edge vectors ``x_src - x_dst`` (E, 3) of positions x (B, n, 3) (differentiable in x)."""
        xf = x.reshape(-1, 3)
        return xf[self.src] - xf[self.dst]


def _excluded(src: torch.Tensor, dst: torch.Tensor, n: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """Mask of edges whose bead pair (either order) is in ``exclude`` (P, 2)."""
    if exclude is None or exclude.numel() == 0:
        return torch.zeros_like(src, dtype=torch.bool)
    e = exclude.to(src.device).reshape(-1, 2)
    keys = torch.cat([e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0]])
    return torch.isin((src % n) * n + dst % n, keys)


def _dense(x: torch.Tensor, cutoff: float, chunk_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, n, _ = x.shape
    per = max(1, chunk_pairs // max(n * n, 1))
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    src, dst = [], []
    for s in range(0, B, per):
        xb = x[s:s + per]
        d2 = ((xb[:, :, None, :] - xb[:, None, :, :]) ** 2).sum(-1)     # (b, i, j)
        b, i, j = torch.nonzero((d2 < cutoff * cutoff) & ~eye, as_tuple=True)
        base = (b + s) * n
        dst.append(base + i)
        src.append(base + j)
    return torch.cat(src), torch.cat(dst)


def _cells(x: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, n, _ = x.shape
    dev = x.device
    xf = x.reshape(-1, 3)
    N = xf.shape[0]
    frame = torch.arange(B, device=dev).repeat_interleave(n)
    lo = x.amin(1)                                                        # (B, 3)
    cell = torch.floor((xf - lo[frame]) / cutoff).long()                 # (N, 3), >= 0
    dims = cell.amax(0) + 1                                               # (3,)

    def key(c: torch.Tensor) -> torch.Tensor:
        return ((frame * dims[0] + c[:, 0]) * dims[1] + c[:, 1]) * dims[2] + c[:, 2]

    order = torch.argsort(key(cell))
    skey = key(cell)[order]
    node = torch.arange(N, device=dev)
    src, dst = [], []
    for off in _OFFSETS.to(dev):
        nc = cell + off
        ok = ((nc >= 0) & (nc < dims)).all(1)
        k = key(nc.clamp(min=0))
        start = torch.searchsorted(skey, k)
        cnt = (torch.searchsorted(skey, k, right=True) - start) * ok
        i = node.repeat_interleave(cnt)
        if i.numel() == 0:
            continue
        first = torch.cumsum(cnt, 0) - cnt
        j = order[start[i] + torch.arange(i.numel(), device=dev) - first[i]]
        keep = (i != j) & (((xf[i] - xf[j]) ** 2).sum(-1) < cutoff * cutoff)
        dst.append(i[keep])
        src.append(j[keep])
    if not src:
        e = torch.zeros(0, dtype=torch.long, device=dev)
        return e, e
    return torch.cat(src), torch.cat(dst)


@torch.no_grad()
def radius_graph(x: torch.Tensor, cutoff: float, exclude: np.ndarray | torch.Tensor | None = None,
                 method: str = "auto", chunk_pairs: int = 4_000_000) -> Graph:
    """Edges between beads of the same frame closer than ``cutoff`` Å.

    Parameters
    ----------
    x : (B, n, 3) positions (or (n, 3) for one frame).
    cutoff : Å; pairs at ``d < cutoff`` are edges.
    exclude : optional (P, 2) bead pairs (indices 0..n-1, either order) that get no edge.
    method : ``"dense"``, ``"cells"`` or ``"auto"`` (dense up to :data:`DENSE_MAX_BEADS` beads).
    chunk_pairs : bound on the pair distances held at once by the dense builder.

    Returns
    -------
    :class:`Graph` with edges sorted by (dst, src).
    """
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must be (frames, beads, 3), got {tuple(x.shape)}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    B, n, _ = x.shape
    x = x.detach()
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_BEADS else "cells"
    if method == "dense":
        src, dst = _dense(x, float(cutoff), chunk_pairs)
    elif method == "cells":
        src, dst = _cells(x, float(cutoff))
    else:
        raise ValueError(f"unknown graph method {method!r}; expected 'dense', 'cells' or 'auto'")
    if exclude is not None:
        keep = ~_excluded(src, dst, n, torch.as_tensor(np.asarray(exclude), dtype=torch.long))
        src, dst = src[keep], dst[keep]
    order = torch.argsort(dst * (B * n) + src)
    return Graph(src[order], dst[order], B, n)
