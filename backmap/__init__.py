"""cgworkbench ``backmap``: equivariant generative backmapping from CG to all-atom coordinates."""
from __future__ import annotations

__version__ = "0.1.0"
