"""Learned CG map of a peptide (one bead per residue) against the residue preset: validity, reconstruction
RMSD on held-out frames, and the time to learn it.

Data: the peptide built by ``forcefield.reference.build_peptide`` (default chignolin GYDPETGTWG, zwitterion),
OpenMM amber14 + OBC2 at 300 K, frames 1 ps apart (the first 80 % train, the last 20 % are held out). Both maps
are scored the same way (``cg.reconstruction_rmsd``: Kabsch-aligned frames, a least-squares linear decoder).

    python benchmarks/mapping_peptide.py [--sequence GYDPETGTWG] [--frames 2000] [--epochs 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequence", default="GYDPETGTWG")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--save-every", type=int, default=1000, help="MD steps (1 fs) between frames")
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    import cg
    from cg.fit_mapping import MappingConfig, fit_mapping
    from forcefield import open_universe
    from forcefield.reference import build_peptide, run_openmm_md

    with tempfile.TemporaryDirectory() as d:
        pdb = Path(d) / "pep.pdb"
        pdb.write_text(build_peptide(a.sequence, caps="zwitterion"))
        t0 = time.perf_counter()
        ds = run_openmm_md(pdb, n_frames=a.frames, save_every=a.save_every, solvent="obc2", seed=a.seed, progress=False)
        t_md = time.perf_counter() - t0
        u = open_universe(pdb, to_guess=("types", "masses", "bonds"), force_guess=("bonds",))
    cut = int(0.8 * len(ds))
    tr, te = ds[:cut], ds[cut:]
    res = {"sequence": a.sequence, "atoms": ds.n_atoms, "frames": len(ds), "md_s": t_md}
    preset = cg.Mapping.from_preset(u.atoms, "residue")
    t0 = time.perf_counter()
    learned = fit_mapping(tr, u, MappingConfig(kind="learned", n_beads=len(u.residues), epochs=a.epochs),
                          seed=a.seed, progress=False)
    res["learn_s"] = time.perf_counter() - t0
    heavy = np.flatnonzero(ds.z > 1)
    for name, m in (("residue_preset", preset), ("learned", learned)):
        r = cg.reconstruction_rmsd(m, tr.R, te.R, subset=heavy)
        assign = m.assignment()
        res[name] = {"beads": m.n_beads, "recon_rmsd_test": r["test"], "recon_rmsd_test_heavy": r["test_subset"],
                     "every_atom_once": bool((assign >= 0).all()), "connected": bool(m.is_connected()),
                     "bead_sizes": [len(b) for b in m.beads]}
        print(f"{name:15s} {m.n_beads} beads: held-out reconstruction RMSD {r['test']:.3f} Å "
              f"(heavy {r['test_subset']:.3f}); every atom once {res[name]['every_atom_once']}, "
              f"connected {res[name]['connected']}")
    print(f"learned in {res['learn_s']:.0f} s; AA sampling {t_md:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
