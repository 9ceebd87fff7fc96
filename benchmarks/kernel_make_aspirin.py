"""Build the kernel benchmark dataset: aspirin, GFN2-xTB Langevin MD with this repository's tools.

aspirin 3D geometry from SMILES (RDKit ETKDG + MMFF, benchmark-only dependency), then
``forcefield.reference.xtb_md`` at 500 K, 0.5 fs steps, a frame every 10 steps. The result is cached
(``bench_out/aspirin_xtb_500K.npz`` by default) so it is made once.

    python benchmarks/kernel_make_aspirin.py [--frames 2000] [--out bench_out/aspirin_xtb_500K.npz]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ASPIRIN_SMILES = "CC(=O)OC1=CC=CC=C1C(=O)O"
DEFAULT_OUT = Path("bench_out/aspirin_xtb_500K.npz")


def aspirin_geometry(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(R0 (21, 3) in Å, z (21,)) for aspirin: RDKit embedding relaxed with MMFF."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(ASPIRIN_SMILES))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise RuntimeError("RDKit could not embed aspirin")
    AllChem.MMFFOptimizeMolecule(mol)
    R0 = mol.GetConformer().GetPositions()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return R0, z


def make_aspirin(out: Path = DEFAULT_OUT, n_frames: int = 2000, progress: bool = True):
    """Load the cached dataset, or run the xTB MD that makes it (~20,000 xTB steps for 2,000 frames)."""
    from forcefield import load_dataset
    from forcefield.reference import xtb_md

    out = Path(out)
    if out.exists():
        ds = load_dataset(out)
        if len(ds) >= n_frames:
            return ds[:n_frames]
    R0, z = aspirin_geometry()
    t0 = time.perf_counter()
    ds = xtb_md(R0, z, n_frames=n_frames, save_every=10, dt_fs=0.5, temperature=500.0, seed=1,
                name="aspirin", progress=progress)
    ds.extra.pop("times_fs", None)
    ds.save(out)
    print(f"made {out}: {len(ds)} frames in {time.perf_counter() - t0:.0f} s")
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    ds = make_aspirin(a.out, a.frames, progress=not a.quiet)
    print(ds.summary())


if __name__ == "__main__":
    main()
