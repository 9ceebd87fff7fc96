"""cgworkbench ``cg``: CG mappings, mapped forces, CG potentials by force matching, CG MD, evaluation."""
from __future__ import annotations

from .mapping import Mapping
from .autoencoder import learn_mapping
from .linear_decoder import reconstruction_rmsd
from .universe import iter_mapped, map_universe, write_mapped

__all__ = ["Mapping"]
__all__ += ["learn_mapping", "reconstruction_rmsd", "map_universe", "iter_mapped", "write_mapped"]
from .md import run_cg_md, write_cg_trajectory
from .potential import CGPotential, SchNetCG, build_potential
from .priors import Priors


def __getattr__(name: str):  # train_force_matching imports Lightning (seconds): only when it is used
    if name == "train_force_matching":
        from .train import train_force_matching

        return train_force_matching
    raise AttributeError(f"module 'cg' has no attribute {name!r}")

__all__ += ["Priors", "CGPotential", "SchNetCG", "build_potential", "train_force_matching", "run_cg_md",
            "write_cg_trajectory"]
__version__ = "0.1.0"
