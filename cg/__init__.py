"""cgworkbench ``cg``: CG mappings, mapped forces, CG potentials by force matching, CG MD, evaluation."""
from __future__ import annotations

from .mapping import Mapping

__all__ = ["Mapping"]
__version__ = "0.1.0"
