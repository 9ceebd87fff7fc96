"""cgworkbench ``cg``: CG mappings, mapped forces, CG potentials by force matching, CG MD, evaluation."""
from __future__ import annotations

__version__ = "0.1.0"
