"""How much a run folder's CG figures move when only the CG model's training seed changes.

Reads a ``cgwb run`` folder (``config.json``, ``reference.npz``, ``mapping.json``, ``topology.pdb``,
``backmap.pt``), then for each seed (of the training and of the CG MD) retrains the CG potential with the run's own force-matching settings
(:func:`cg.forcematching.fit_cg_model`), runs the run's CG MD (:func:`cg.simulate.simulate_cg`) and reports the
figures the main job reports for it: stable fraction, bonded JS mean / max (:func:`cg.evaluate.bonded_js`)
and, through the run's backmapper, the φ/ψ free-energy JS against the reference (:func:`cg.evaluate.fes_js`),
beside the reference's own half-against-half floors. The spread over seeds is the training noise of the
CG figures, which a single run cannot show.

Variants of the run's settings: ``--ensemble K`` (K networks per model, averaged: ``cg.ensemble``) and
``--no-gate`` (no domain gate: ``cg.domain_gate = false``).

    python benchmarks/cg_seed_spread.py runs/alanine-dipeptide [--seeds 0 1 2] [--threads 2] [--ensemble K]
        [--no-gate]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a cgwb run folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ensemble", type=int, default=None, help="networks per model, averaged (default: the run's)")
    ap.add_argument("--no-gate", action="store_true", help="train without the domain gate")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the rows (default: RUN/cg_seed_spread.json)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import backmap
    from cg import Mapping
    from cg.evaluate import bonded_js, fes_js, phi_psi
    from cg.forcematching import CGModel, fit_cg_model
    from cg.simulate import SimulationConfig, simulate_cg
    from forcefield import InputError, load_dataset, open_universe
    from forcefield.universe import backbone_phi_psi_atoms

    run = a.run
    cfg = json.loads((run / "config.json").read_text())  # the run's settings, as the pipeline resolved them
    c, temperature = cfg["cg"], cfg["system"]["temperature"]
    m = Mapping.load(run / "mapping.json")
    ref = load_dataset(run / "reference.npz")
    ref_cg = m.map_positions(ref.R)
    fm = CGModel.load(run / "cg_potential.pt").config  # the force-matching config the run trained with
    update = {**({"ensemble": a.ensemble} if a.ensemble else {}), **({"domain_gate": False} if a.no_gate else {})}
    fm = fm.replace(**update) if update else fm
    variant = ", ".join(f"{k}={v}" for k, v in update.items()) or "as the run"
    if not c["md_ns"] or not c["save_fs"]:
        raise InputError(f"{run / 'config.json'}: cg.md_ns and cg.save_fs must be set for this benchmark")
    n_steps = max(100, int(c["md_ns"] * 1e6 / c["timestep_fs"] / c["replicas"]))
    sim = SimulationConfig(replicas=c["replicas"], n_steps=n_steps, timestep_fs=c["timestep_fs"],
                           save_every=max(1, int(round(c["save_fs"] / c["timestep_fs"]))),
                           friction_per_ps=c["friction_per_ps"], temperature=float(temperature), compile=c["compile"])
    bm = backmap.Backmapper.load(run / "backmap.pt")
    u = open_universe(run / "topology.pdb", to_guess=("types", "masses", "bonds"), force_guess=("bonds",))
    quads = backbone_phi_psi_atoms(u)
    pp_ref = phi_psi(ref.R, *quads) if quads is not None else None
    half = len(ref_cg) // 2
    floor = bonded_js(ref_cg[:half], ref_cg[half:], m.bonds)
    rows = []
    for seed in a.seeds:
        t0 = time.perf_counter()
        model = fit_cg_model(m, ref, fm, temperature=temperature, seed=seed, progress=False)
        t_fit = time.perf_counter() - t0
        masses = m.represented_masses() if c["bead_masses"] == "represented" else None
        traj = simulate_cg(model.potential, ref_cg, sim, reference=ref_cg, seed=seed, progress=False, masses=masses)
        R = traj.frames()
        js = bonded_js(ref_cg, R, m.bonds)
        row = {"seed": seed, "variant": variant, "fit_s": t_fit, "epochs": model.info.get("epochs"),
               "val_rmse": model.info.get("best_val_rmse"), "stable": traj.stable_fraction,
               "bonded_js": js["all_mean"], "bonded_js_max": js["all_max"]}
        if pp_ref is not None and len(R):
            nb = cfg["backmap"]["cg_frames"]  # as the main job: evenly spaced CG frames, one sample each
            sel = R[np.linspace(0, len(R) - 1, nb).round().astype(int)] if len(R) > nb else R
            gen = bm.sample(sel, n_samples=1, seed=seed, temperature=cfg["backmap"]["temperature"])
            X = np.stack([gen.atoms.positions.astype(np.float64) for _ in gen.trajectory])
            row["fes_js"] = fes_js(pp_ref, phi_psi(X, *quads), bins=36)["js"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    fl = {"bonded_js_floor": floor["all_mean"], "bonded_js_max_floor": floor["all_max"]}
    if pp_ref is not None:
        fl["fes_js_floor"] = fes_js(pp_ref[:len(pp_ref) // 2], pp_ref[len(pp_ref) // 2:], bins=36)["js"]
    print(f"\nvariant: {variant}")
    print("\n| seed | epochs | val RMSE | stable | bonded JS mean / max | φ/ψ FES JS |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['epochs']} | {r['val_rmse']:.3f} | {r['stable']:.2f} | {r['bonded_js']:.4f} / "
              f"{r['bonded_js_max']:.4f} | {r.get('fes_js', float('nan')):.4f} |")
    print(f"| reference half vs half | | | | {fl['bonded_js_floor']:.4f} / {fl['bonded_js_max_floor']:.4f} | "
          f"{fl.get('fes_js_floor', float('nan')):.4f} |")
    out = a.out or run / "cg_seed_spread.json"
    out.write_text(json.dumps({"rows": rows, "floors": fl}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
