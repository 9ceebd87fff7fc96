"""Reference data from real engines: OpenMM (classical MD) and GFN2-xTB via tblite (quantum labels); peptide
builder (ideal geometry, amber names)."""
from .openmm_md import openmm_energy_forces, run_openmm_md
from .openmm_remd import geometric_temperatures, run_openmm_remd
from .peptide import build_peptide, parse_sequence
from .xtb import XTB, label_dataset, xtb_energy_forces, xtb_md

__all__ = ["XTB", "build_peptide", "geometric_temperatures", "label_dataset", "openmm_energy_forces",
           "parse_sequence", "run_openmm_md", "run_openmm_remd", "xtb_energy_forces", "xtb_md"]
