"""Reference data from real engines: OpenMM (classical MD) and GFN2-xTB via tblite (quantum labels)."""
from .openmm_md import openmm_energy_forces, run_openmm_md
from .xtb import XTB, label_dataset, xtb_energy_forces, xtb_md

__all__ = ["XTB", "label_dataset", "openmm_energy_forces", "run_openmm_md", "xtb_energy_forces", "xtb_md"]
