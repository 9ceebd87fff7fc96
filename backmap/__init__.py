"""cgworkbench ``backmap``: equivariant generative backmapping from CG to all-atom coordinates.

Public API: :class:`Backmapper` (fit / sample / save / load) and :func:`evaluate`; the model, losses,
training loop, sampling/relaxation and metrics live in :mod:`backmap.model`, :mod:`backmap.losses`,
:mod:`backmap.train`, :mod:`backmap.sample` and :mod:`backmap.metrics`.
"""
from __future__ import annotations

from .api import Backmapper, evaluate

__all__ = ["Backmapper", "evaluate"]
__version__ = "0.1.0"
