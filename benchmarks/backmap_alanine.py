"""Backmapping benchmark on alanine dipeptide: CGVAE's table side by side with ours, on held-out frames.

Data: OpenMM amber14 vacuum MD at 300 K (frames 1 ps apart: nearly independent, so the model cannot learn
hydrogens from memorised neighbouring frames); the last 20 % of the trajectory is held out (a time split, so
test frames are not interleaved with training frames). Mappings: 3 beads (one per residue:
ACE, ALA, NME) and 6 beads (CH3 | C=O | N-H,CA,HA | CB methyl | C=O | NME), built from atom indices,
centre-of-mass weighting; with ``--preset`` also the ``cg.Mapping.from_preset`` mappings named there.

Figures, all on held-out frames (Å):
* posterior reconstruction ("recon", CGVAE's table): decode the posterior mean given the true AA frame;
* prior sampling ("sample"): z ~ p(z | CG), ``--samples`` per CG frame, at the prior temperatures of
  ``--temperatures`` (the scale of the prior's standard deviation; 1 = as trained);
* RMSD after optimal alignment (mean over samples), valid bond graphs, graph-edit ratio, clash rate,
  diversity, COV/MAT, amber14 energies (before and after a short restrained relaxation), samples/s (CPU).

Usage: python benchmarks/backmap_alanine.py [--quick] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CGVAE = {  # CGVAE repository table, alanine dipeptide (heavy / all-atom recon RMSD, Å)
    3: {"rmsd_heavy": 0.21, "rmsd_all": 0.53, "ged_heavy": 0.002, "ged_all": 0.042},
    6: {"rmsd_heavy": 0.110, "rmsd_all": 0.119},
}
TARGET_ALL = {3: 0.45, 6: 0.10}
BEADS = {
    3: ([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21]], ["ACE", "ALA", "NME"]),
    6: ([[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15], [16, 17, 18, 19, 20, 21]],
        ["CH3", "CO1", "NCA", "CB", "CO2", "NME"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data and short training (a smoke run)")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    ap.add_argument("--frames", type=int, default=None, help="MD frames (default 5000, quick 1200)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 20, quick 4)")
    ap.add_argument("--samples", type=int, default=10, help="prior samples per CG frame")
    ap.add_argument("--save-every", type=int, default=1000, help="MD steps (fs) between frames (default 1 ps)")
    ap.add_argument("--test-frames", type=int, default=200, help="held-out frames evaluated")
    ap.add_argument("--beads", default="6,3", help="bead counts to run (default: %(default)s)")
    ap.add_argument("--preset", default="", help="comma-separated cg presets to add (e.g. residue)")
    ap.add_argument("--gamma-prior", type=float, default=None, help="weight of geometry terms on prior draws")
    ap.add_argument("--latent", type=int, default=16, help="latent size per bead")
    ap.add_argument("--beta", type=float, default=None, help="KL weight (default: TrainConfig's)")
    ap.add_argument("--temperatures", default="1.0,0.7",
                    help="prior temperatures (scale of the prior's standard deviation) to sample at; the first is "
                         "the main figure (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for backmapped PDB/DCD and models")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from backmap import Backmapper, evaluate
    from backmap.metrics import energies
    from cg.mapping import Mapping
    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.elements import masses
    from forcefield.reference import run_openmm_md

    n_frames = args.frames or (1200 if args.quick else 5000)
    epochs = args.epochs or (4 if args.quick else 20)
    n_test = min(args.test_frames, 60 if args.quick else args.test_frames)
    pdb = alanine_dipeptide_pdb()
    t0 = time.time()
    ds = run_openmm_md(pdb, n_frames=n_frames, save_every=args.save_every, seed=7, progress=False)
    t_md = time.time() - t0
    n_train = int(0.8 * n_frames)
    train = ds.subset(np.arange(n_train))
    test_idx = np.linspace(n_train, n_frames - 1, n_test).round().astype(int)
    test = ds.subset(test_idx)
    print(f"MD: {n_frames} frames ({args.save_every} fs apart) in {t_md:.1f} s; train {n_train} (first 80 %), test {n_test} held-out frames")

    mappings = []
    for nb in [int(x) for x in args.beads.split(",") if x]:
        beads, names = BEADS[nb]
        mappings.append((f"{nb} beads", nb, Mapping.from_indices(beads, masses(ds.z), "com", names=names)))
    for preset in [p for p in args.preset.split(",") if p]:
        from forcefield import open_universe

        m = Mapping.from_preset(open_universe(pdb).atoms, preset)
        mappings.append((f"preset {preset}", m.n_beads, m))

    results: dict = {"n_frames": n_frames, "n_train": n_train, "n_test": n_test, "epochs": epochs,
                     "samples": args.samples, "md_seconds": t_md, "runs": {}}
    for label, nb, mapping in mappings:
        print(f"\n=== {label} ({mapping.n_beads} beads, {mapping.weighting}) ===")
        extra = {} if args.gamma_prior is None else {"gamma_prior": args.gamma_prior}
        if args.beta is not None:
            extra["beta"] = args.beta
        bm = Backmapper(mapping, hidden=32, latent=args.latent, device=args.device, epochs=epochs, batch_size=32,
                        **extra)
        t = time.time()
        bm.fit(train, progress=False)
        t_fit = time.time() - t
        R_ref = test.R
        X = mapping.map_positions(R_ref)
        rec = bm.reconstruct_positions(test)
        m_rec = evaluate(R_ref, rec[:, None], z=ds.z)
        temps = [float(x) for x in args.temperatures.split(",") if x]
        t = time.time()
        S = bm.sample_positions(X, n_samples=args.samples, seed=0, temperature=temps[0])
        t_s = time.time() - t
        m_s = evaluate(R_ref, S, z=ds.z)
        by_temp = {temps[0]: m_s}
        for T in temps[1:]:
            by_temp[T] = evaluate(R_ref, bm.sample_positions(X, n_samples=args.samples, seed=0, temperature=T), z=ds.z)
        # energies: a subset of samples before and after restrained relaxation
        sub = S[: min(20, n_test), :2].reshape(-1, ds.n_atoms, 3)
        t = time.time()
        relaxed = bm.relax(sub, max_iterations=200)
        t_relax = time.time() - t
        E_raw, E_rel = energies(str(pdb), sub), energies(str(pdb), relaxed)
        E_ref = energies(str(pdb), R_ref[: min(20, n_test)])
        m_rel = evaluate(R_ref[: min(20, n_test)], relaxed.reshape(-1, 2, ds.n_atoms, 3), z=ds.z)
        run = {"beads": mapping.n_beads, "fit_seconds": t_fit, "epochs": epochs,
               "val_rmsd_post": [round(h["rmsd_post"], 4) for h in bm.history.val],
               "recon": m_rec, "sample": m_s, "sample_temperature": temps[0], "sample_relaxed": m_rel,
               "sample_by_temperature": {str(T): v for T, v in by_temp.items()},
               "samples_per_second_cpu": S.shape[0] * S.shape[1] / t_s,
               "relax_seconds_per_sample": t_relax / len(sub),
               "energy_ref_median": float(np.median(E_ref)), "energy_sample_median": float(np.median(E_raw)),
               "energy_relaxed_median": float(np.median(E_rel))}
        results["runs"][label] = run
        anchor = CGVAE.get(nb, {}) if label.endswith("beads") else {}
        print(f"trained in {t_fit:.0f} s ({epochs} epochs); sampling {run['samples_per_second_cpu']:.0f} samples/s (CPU)")
        print(f"{'figure':34s} {'ours':>9s} {'CGVAE':>9s} {'target':>9s}")
        rows = [
            ("recon RMSD heavy (Å)", m_rec["rmsd_heavy"], anchor.get("rmsd_heavy"), None),
            ("recon RMSD all (Å)", m_rec["rmsd_all"], anchor.get("rmsd_all"), TARGET_ALL.get(nb)),
            ("recon graph-edit heavy", m_rec["graph_edit_ratio_heavy"], anchor.get("ged_heavy"), None),
            ("recon graph-edit all", m_rec["graph_edit_ratio"], anchor.get("ged_all"), None),
            ("recon valid graphs", m_rec["valid_ratio"], None, 0.99),
            ("recon clash rate", m_rec["clash_rate"], None, 0.01),
            ("sample RMSD heavy (Å)", m_s["rmsd_heavy"], None, None),
            ("sample RMSD all (Å)", m_s["rmsd_all"], None, None),
            ("sample valid graphs", m_s["valid_ratio"], None, 0.99),
            ("sample graph-edit all", m_s["graph_edit_ratio"], None, None),
            ("sample clash rate", m_s["clash_rate"], None, 0.01),
            ("sample diversity", m_s["diversity"], None, None),
            ("sample spread (RMSD, Å)", m_s["sample_spread"], None, None),
            (f"sample COV@{m_s['cov_threshold']} / MAT heavy", m_s["cov"], None, None),
            ("", m_s["mat"], None, None),
            ("relaxed valid graphs", m_rel["valid_ratio"], None, None),
            ("relaxed RMSD all (Å)", m_rel["rmsd_all"], None, None),
            ("energy median ref (kcal/mol)", run["energy_ref_median"], None, None),
            ("energy median sample", run["energy_sample_median"], None, None),
            ("energy median relaxed", run["energy_relaxed_median"], None, None),
        ]
        for T in temps[1:]:
            m = by_temp[T]
            rows += [(f"T={T:g}: sample valid graphs", m["valid_ratio"], None, 0.99),
                     (f"T={T:g}: sample clash rate", m["clash_rate"], None, 0.01),
                     (f"T={T:g}: sample RMSD all (Å)", m["rmsd_all"], None, None),
                     (f"T={T:g}: sample diversity", m["diversity"], None, None)]
        for name, ours, anc, tgt in rows:
            f = lambda v: "" if v is None else f"{v:9.3f}"  # noqa: E731
            print(f"{name:34s} {f(ours):>9s} {f(anc):>9s} {f(tgt):>9s}")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            bm.save(out / f"backmap_{nb}.pt")
            from backmap.universe import write_aa

            write_aa(bm.sample(X[:20], n_samples=5, seed=1), out / f"backmap_{nb}.dcd")
    if args.json:
        from forcefield.fileio import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1, default=float))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
