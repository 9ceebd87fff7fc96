"""Make the small sGDML reference files under tests/data (run once; needs RDKit and the sgdml venv).

1. ethanol from SMILES (RDKit), GFN2-xTB Langevin MD at 500 K (forcefield.reference.xtb_md), 60 frames
   saved every 10 steps of 0.5 fs -> tests/data/ethanol_xtb.npz
2. frames 0..29 train, 30..39 valid, 40..49 test; sgdml 1.0.3 (own venv, numpy<2.4) trains with sig=10
   and the 6 methyl-hydrogen permutations given -> tests/data/sgdml_ethanol_model.npz; its predictions for the test frames ->
   tests/data/sgdml_ethanol_pred.npz
3. the same with energy constraints (use_E_cstr) -> tests/data/sgdml_ethanol_ecstr_model.npz and
   tests/data/sgdml_ethanol_ecstr_pred.npz (``--only-ecstr`` makes just these from the stored dataset)

    python benchmarks/kernel_sgdml_testdata.py [--sgdml-python /tmp/sgdml-venv/bin/python]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sgdml-python", default="/tmp/sgdml-venv/bin/python")
    ap.add_argument("--only-ecstr", action="store_true", help="only the energy-constrained model files")
    a = ap.parse_args()
    if a.only_ecstr:
        from forcefield import load_dataset

        ds = load_dataset(DATA / "ethanol_xtb.npz")
        _train_sgdml(a, ds, "sgdml_ethanol_ecstr", ["--e-cstr"])
        return
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from forcefield.reference import xtb_md

    DATA.mkdir(parents=True, exist_ok=True)
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    AllChem.MMFFOptimizeMolecule(mol)
    R0 = mol.GetConformer().GetPositions()
    z = np.array([at.GetAtomicNum() for at in mol.GetAtoms()])
    ds = xtb_md(R0, z, n_frames=60, save_every=10, dt_fs=0.5, temperature=500.0, seed=2, name="ethanol",
                progress=False)
    ds.extra.pop("times_fs", None)
    ds.save(DATA / "ethanol_xtb.npz", compressed=True)
    _train_sgdml(a, ds, "sgdml_ethanol", [])
    _train_sgdml(a, ds, "sgdml_ethanol_ecstr", ["--e-cstr"])


def _train_sgdml(a, ds, stem: str, extra: list[str]) -> None:
    """sgdml on frames 0..29 (valid 30..39), predictions for 40..49 -> tests/data/{stem}_model/_pred.npz."""
    import itertools

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds[:30].save(tmp / "train.npz")
        ds[30:40].save(tmp / "valid.npz")
        ds[40:50].save(tmp / "test.npz")
        perms = np.array([[0, 1, 2, *q, 6, 7, 8] for q in itertools.permutations([3, 4, 5])])
        assert list(ds.z[3:6]) == [1, 1, 1] and ds.z[0] == 6  # the methyl hydrogens of C0
        np.save(tmp / "perms.npy", perms)
        drv = Path(__file__).with_name("kernel_sgdml_driver.py")
        subprocess.run([a.sgdml_python, str(drv), "--train", str(tmp / "train.npz"), "--valid",
                        str(tmp / "valid.npz"), "--test", str(tmp / "test.npz"), "--sigma", "10",
                        "--max-processes", "1", "--perms", str(tmp / "perms.npy"),
                        "--model-out", str(DATA / f"{stem}_model.npz"), "--pred-out", str(DATA / f"{stem}_pred.npz"),
                        "--json", str(tmp / "o.json"), *extra],
                       check=True, stdout=sys.stdout)


if __name__ == "__main__":
    main()
