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
        ("md", "Force matching is one recipe with a typed config: the force map, Boltzmann-inversion priors, a "
               "network, and training with contiguous validation blocks (never shuffled MD frames)."),
        ("code", "from forcefield import Dataset\n"
                 "from cg.forcematching import ForceMatchingConfig, fit_cg_model\n"
                 "ds = Dataset.from_universe(u)                      # forces converted to kcal/mol/Å at the edge\n"
                 "model = fit_cg_model(m, ds, ForceMatchingConfig(epochs=2 if TINY else 40), temperature=300.0, progress=False)\n"
                 "print(f\"validation force RMSE {model.info['best_val_rmse']:.2f} kcal/mol/Å \"\n"
                 "      f\"(priors alone {model.info['prior_val_rmse']:.2f})\")\n"
                 "model.save('cg_model.pt')"),
        ("code", "from cg.simulate import SimulationConfig, simulate_cg\n"
                 "from cg.evaluate import bonded_js\n"
                 "R = m.map_positions(ds.R)\n"
                 "traj = simulate_cg(model.potential, R, SimulationConfig(replicas=4, n_steps=200 if TINY else 20000,\n"
                 "                   save_every=50, temperature=300.0), reference=R, progress=False)\n"
                 "print('stable replicas:', traj.stable_fraction, ' ns/day:', round(traj.speed['ns_per_day']))\n"
                 "print('bonded JS (mean):', bonded_js(R, traj.frames(), m.bonds)['all_mean'])"),
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
        ("code", "from backmap.recipe import BackmapConfig, evaluate_backmapper, fit_backmapper\n"
                 "cfg = BackmapConfig(epochs=2 if TINY else 100, samples=2, frames=50)\n"
                 "bm = fit_backmapper(m, train, cfg, progress=False)\n"
                 "print(evaluate_backmapper(bm, test, cfg))             # prior_* (samples) and recon_* (posterior) figures\n"
                 "cg_frames = m.map_positions(test.R)\n"
                 "gen = bm.sample(cg_frames, n_samples=2)              # AA Universe: frame f*2+s is sample s of CG frame f"),
        ("code", "from forcefield.universe import write_universe\n"
                 "write_universe(gen, 'backmapped.dcd')                 # PDB + DCD with the original topology\n"
                 "bm.save('backmap.pt'); bm2 = backmap.Backmapper.load('backmap.pt')"),
    ],
    "05_peptide.ipynb": [
        ("md", "# A peptide, coarse-grained to one bead per residue\n\n"
               "Chignolin (GYDPETGTWG) built with ideal geometry and amber names (no download), sampled with "
               "OpenMM in OBC2 implicit solvent, mapped to C-alpha beads (CG bonds, angles and dihedrals from the "
               "residue chain), fitted by force matching and simulated; Rg, end-to-end distance, native contacts and "
               "a TICA free-energy surface are compared with the reference, each with its noise floor. The same run "
               "as a config: `cgwb run --config examples/chignolin.toml`."),
        ("code", SETUP),
        ("code", "from forcefield import open_universe\n"
                 "from forcefield.reference import build_peptide, run_openmm_md\n"
                 "open('chignolin.pdb', 'w').write(build_peptide('GYDPETGTWG', caps='zwitterion'))\n"
                 "aa = run_openmm_md('chignolin.pdb', n_frames=60 if TINY else 10000, save_every=100 if TINY else 1000,\n"
                 "                   solvent='obc2', equilibration_steps=500 if TINY else 10000, progress=False)\n"
                 "u = open_universe('chignolin.pdb', to_guess=('types', 'masses', 'bonds'), force_guess=('bonds',))\n"
                 "print(aa.summary())"),
        ("code", "import cg\n"
                 "m = cg.Mapping.from_preset(u.atoms, 'ca')\n"
                 "print(m.n_beads, 'beads of types', m.bead_types)\n"
                 "print('CG bonds', m.bonds.tolist())\n"
                 "print(len(m.angles), 'angles,', len(m.dihedrals), 'dihedrals,', len(m.exclusions), 'excluded pairs')"),
        ("code", "from cg.forcematching import ForceMatchingConfig, fit_cg_model\n"
                 "from cg.simulate import SimulationConfig, simulate_cg\n"
                 "cfg = ForceMatchingConfig(network='schnet', epochs=2 if TINY else 100, min_prior_frames=20)\n"
                 "model = fit_cg_model(m, aa, cfg, temperature=300.0, progress=False)\n"
                 "X = m.map_positions(aa.R)\n"
                 "traj = simulate_cg(model.potential, X, SimulationConfig(replicas=4, n_steps=200 if TINY else 50000,\n"
                 "                   save_every=50 if TINY else 500), reference=X, progress=False)\n"
                 "print('stable replicas', traj.stable_fraction, ' CG ns/day (summed)', round(traj.speed['ns_per_day']))"),
        ("code", "from cg.protein_metrics import protein_report\n"
                 "rep = protein_report(X, traj.frames(), tica_lag=2 if TINY else 10)\n"
                 "{k: round(v, 4) for k, v in rep.items() if isinstance(v, float)}"),
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
