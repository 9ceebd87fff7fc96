"""cgworkbench ``cg``: CG mappings, mapped forces, CG potentials by force matching, CG MD, evaluation."""
from __future__ import annotations

from .mapping import Mapping
from .autoencoder import learn_mapping
from .linear_decoder import reconstruction_rmsd
from .universe import iter_mapped, map_universe, write_mapped

__all__ = ["Mapping"]
__all__ += ["learn_mapping", "reconstruction_rmsd", "map_universe", "iter_mapped", "write_mapped"]
__version__ = "0.1.0"
