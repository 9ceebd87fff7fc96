"""Write the tutorial notebooks (outputs stripped) from the cell sources below.

    python notebooks/make_notebooks.py

Each notebook reads ``CGWB_TINY=1`` from the environment to shrink every size, which is how the test suite
runs them top to bottom (tests/test_notebooks.py).
"""
from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SETUP = """import os
TINY = os.environ.get("CGWB_TINY") == "1"   # the test suite runs every notebook with tiny sizes
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
%matplotlib inline"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_kernel_force_field.ipynb": [
        ("md", "# Kernel global force field on an sGDML-format dataset\n\n"
               "The `forcefield` package reads and writes sGDML-format `.npz` datasets (MD17/MD22 files downloaded "
               "by you load directly) and trains an sGDML-class kernel force field on them. Here we make a small "
               "dataset ourselves: OpenMM samples alanine dipeptide and GFN2-xTB (tblite) labels the frames."),
        ("code", SETUP),
        ("code", "from forcefield import Dataset, KernelForceField, load_dataset\n"
                 "from forcefield.data import alanine_dipeptide_pdb\n"
                 "from forcefield.reference import run_openmm_md, label_dataset\n\n"
                 "n = 40 if TINY else 600\n"
                 "aa = run_openmm_md(alanine_dipeptide_pdb(), n_frames=n, save_every=200, progress=False)\n"
                 "ds = label_dataset(aa, progress=False)        # GFN2-xTB energies (kcal/mol) and forces (kcal/mol/Å)\n"
                 "ds.save('ala_xtb.npz')                        # sGDML layout: R, z, E, F, name, theory, md5, ...\n"
                 "ds = load_dataset('ala_xtb.npz')\n"
                 "print(ds.summary())"),
        ("md", "Split the frames, fit the model (forces and energies), and test it on held-out frames."),
        ("code", "n_train = len(ds) * 3 // 4\n"
                 "tr, te = ds[:n_train], ds[n_train:]\n"
                 "ff = KernelForceField(sigma=20).fit(tr.R, tr.z, F=tr.F, E=tr.E)\n"
                 "E, F = ff.predict(te.R)\n"
                 "print(f'force MAE {np.abs(F - te.F).mean():.2f} kcal/mol/Å, energy MAE {np.abs(E - te.E).mean():.2f} kcal/mol')\n"
                 "plt.figure(figsize=(4, 4)); plt.plot(te.F.ravel(), F.ravel(), '.', ms=2)\n"
                 "plt.xlabel('GFN2-xTB force'); plt.ylabel('kernel FF force'); plt.show()"),
        ("md", "Save and load the model (a safe `.npz`, no pickles); it predicts the same numbers."),
        ("code", "ff.save('ala_kernel.npz')\n"
                 "ff2 = KernelForceField.load('ala_kernel.npz')\n"
                 "assert np.allclose(ff2.predict(te.R[:3])[1], F[:3])"),
    ],
    "02_mapping_and_force_matching.ipynb": [
        ("md", "# CG mapping and force matching on an MDAnalysis trajectory\n\n"
               "Any topology + trajectory MDAnalysis reads can enter. We write an OpenMM trajectory of alanine "
               "dipeptide with forces to PDB + TRR, read it back with MDAnalysis, map it to beads, and fit a CG "
               "potential (Boltzmann-inversion priors + a neural network) by force matching."),
        ("code", SETUP),
        ("code", "import MDAnalysis as mda\n"
                 "from forcefield.data import alanine_dipeptide_pdb\n"
                 "from forcefield.reference import run_openmm_md\n"
                 "from forcefield.universe import write_universe\n\n"
                 "aa = run_openmm_md(alanine_dipeptide_pdb(), n_frames=200 if TINY else 5000, save_every=100, progress=False)\n"
                 "write_universe(aa.to_universe(alanine_dipeptide_pdb()), 'ala.trr')   # also writes ala.pdb\n"
                 "u = mda.Universe('ala.pdb', 'ala.trr')\n"
                 "print(u, len(u.trajectory), 'frames; forces:', u.trajectory.ts.has_forces)"),
        ("code", "import cg\n"
                 "m = cg.Mapping.from_preset(u.atoms, 'heavy')        # also: backbone, backbone_cb, residue, ca\n"
                 "print(m.n_beads, 'beads:', m.names)\n"
                 "cgu = cg.map_universe(u, m)                          # beads with mapped positions and forces\n"
                 "m.save('heavy.json')\n"
                 "learned = cg.learn_mapping(u.atoms, n_beads=4, epochs=20 if TINY else 200, progress=False)\n"
                 "print('learned 4-bead map:', [list(b) for b in learned.beads])"),
        ("code", "from cg.priors import Priors\n"
                 "from cg.potential import build_potential\n"
                 "from cg.train import train_force_matching\n"
                 "R = np.stack([cgu.atoms.positions.astype(float) for _ in cgu.trajectory])\n"
                 "F = np.stack([cgu.atoms.forces.astype(float) / 4.184 for _ in cgu.trajectory])   # kJ/(mol Å) -> kcal/mol/Å\n"
                 "pri = Priors.fit(R, m.bonds, 300.0)\n"
                 "pot = build_potential(pri, m.names, m.masses, m.bonds)\n"
                 "hist = train_force_matching(pot, R, F, epochs=2 if TINY else 40, progress=False)\n"
                 "print(f'validation force RMSE {hist.best_val_rmse:.2f} kcal/mol/Å (priors alone {hist.prior_val_rmse:.2f})')"),
        ("code", "from cg.md import run_cg_md\n"
                 "from cg.evaluate import bonded_js\n"
                 "run = run_cg_md(pot, R[:4], 200 if TINY else 20000, dt_fs=2.0, save_every=50, temperature=300.0, progress=False)\n"
                 "print(run.summary())\n"
                 "print('bonded JS (mean):', bonded_js(R, run.frames(), m.bonds)['all_mean'])"),
    ],
    "03_backmapping.ipynb": [
        ("md", "# Backmapping CG frames to all-atom coordinates\n\n"
               "`backmap.Backmapper` is an equivariant conditional VAE: it learns p(AA | CG) from an AA trajectory "
               "and samples AA structures for CG frames."),
        ("code", SETUP),
        ("code", "import MDAnalysis as mda, cg, backmap\n"
                 "from forcefield.data import alanine_dipeptide_pdb\n"
                 "from forcefield.reference import run_openmm_md\n"
                 "aa = run_openmm_md(alanine_dipeptide_pdb(), n_frames=120 if TINY else 3000, save_every=100, progress=False)\n"
                 "u = aa.to_universe(alanine_dipeptide_pdb())\n"
                 "m = cg.Mapping.from_preset(u.atoms, 'backbone')\n"
                 "train, test = aa[:100 if TINY else 2700], aa[100 if TINY else 2700:]"),
        ("code", "bm = backmap.Backmapper(m).fit(train, epochs=2 if TINY else 100, progress=False)\n"
                 "cg_frames = m.map_positions(test.R)\n"
                 "gen = bm.sample(cg_frames, n_samples=2)              # AA Universe: frame f*2+s is sample s of CG frame f\n"
                 "print(backmap.evaluate(gen, test))"),
        ("code", "from forcefield.universe import write_universe\n"
                 "write_universe(gen, 'backmapped.dcd')                 # PDB + DCD with the original topology\n"
                 "bm.save('backmap.pt'); bm2 = backmap.Backmapper.load('backmap.pt')"),
    ],
    "04_full_pipeline.ipynb": [
        ("md", "# The whole pipeline\n\n"
               "`run_pipeline` is what `cgwb run` calls: AA sampling → GFN2-xTB labels → kernel force field → "
               "kernel-FF MD → learned 6-bead mapping → force-matched CG potential → CG MD → backmapping → "
               "evaluation. Finished stages are skipped on a re-run."),
        ("code", SETUP),
        ("code", "from cgwb.pipeline.run import run_pipeline\n"
                 "report = run_pipeline(quick=TINY, out='run', progress=False)\n"
                 "{k: v for k, v in report.items() if not isinstance(v, (list, dict))}"),
        ("code", "from IPython.display import Image, display\n"
                 "for png in ['fes_aa_vs_cg.png', 'cg_bonded.png', 'kernel_parity.png']:\n"
                 "    if os.path.exists(f'run/{png}'):\n"
                 "        display(Image(f'run/{png}'))"),
    ],
}


def build() -> list[Path]:
    out = []
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                    for kind, src in cells]
        path = HERE / name
        nbformat.write(nb, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in build():
        print("wrote", p)
