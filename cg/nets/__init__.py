"""CG networks and their shared pieces: cutoff graphs (:mod:`cg.nets.graph`) and the e3nn equivariant
energy network (:mod:`cg.nets.equivariant`)."""
from __future__ import annotations

from .equivariant import EquivariantCG, EquivariantStack
from .graph import Graph, radius_graph

__all__ = ["EquivariantCG", "EquivariantStack", "Graph", "radius_graph"]
