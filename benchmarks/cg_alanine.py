"""Benchmark: CG alanine dipeptide by force matching (priors + SchNet), CG Langevin MD, Fu et al. metrics.

Pipeline
--------
1. AA reference: OpenMM amber14, vacuum, 300 K, Langevin 1 fs, frames every 100 fs; its forces come from
   the same potential that sampled it (OpenMM Reference platform, the AA engine timed for the speed ratio).
2. Mapping "heavy10": one bead per heavy atom, hydrogens merged into their heavy atom, centre of mass
   (every atom is in exactly one bead). φ/ψ are taken from the beads C(ACE)-N-CA-C-N(NME); these beads sit
   within ~0.1 Å of the heavy atoms (N+H, CA+HA COMs), so bead φ/ψ track atomistic φ/ψ closely; the script
   reports the mean |bead φ − atom φ| on the reference. All FES comparisons use bead φ/ψ for both sides.
3. Mapped forces: by default the least-noise consistent force map (``Mapping.with_optimal_forces``; the
   plain per-bead sum with ``--force-map sum``); both have the same mean force.
   Priors by Boltzmann inversion + a network trained by force matching (train/val split, early stopping):
   FeatureNet (MLP over internal coordinates, CGnet-style); with `--nets features,schnet` also SchNetCG.
   Then a learned 6-bead map (cg.learn_mapping) with FeatureNet (no φ/ψ there: bonded JS, stability, h(r)).
4. CG MD: many replicas started from reference frames (uniformly drawn), BAOAB 2 fs, 300 K; total CG
   simulated time = AA simulated time. Instability check: any bond > 0.5 Å from its reference mean.
5. Metrics: φ/ψ FES JS (60×60 grid of 6° bins; also 36×36), bonded JS (100 bins), stability, h(r) error,
   speed (bead-steps/s, ns/day vs OpenMM on this machine), training time per epoch.

Usage: ``python benchmarks/cg_alanine.py [--quick] [--json out.json] [--out DIR]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEAVY10 = {  # bead name -> atoms of data/alanine-dipeptide.pdb (0-based)
    "CAY": [0, 1, 2, 3], "CY": [4], "OY": [5], "N": [6, 7], "CA": [8, 9], "CB": [10, 11, 12, 13],
    "C": [14], "O": [15], "NT": [16, 17], "CAT": [18, 19, 20, 21],
}
PHI_BEADS, PSI_BEADS = (1, 3, 4, 6), (3, 4, 6, 8)
PHI_ATOMS, PSI_ATOMS = (4, 6, 8, 14), (6, 8, 14, 16)


def heavy_mapping(ds):
    from cg import Mapping
    from forcefield.geometry import covalent_bonds

    return Mapping.from_indices(list(HEAVY10.values()), ds.masses, "com", names=list(HEAVY10),
                                atom_bonds=covalent_bonds(ds.R[0], ds.z), source="heavy atoms, H merged (COM)")


def _check_preset(ds, mp, res) -> None:
    """Record whether the colleague's ``Mapping.from_preset(..., "heavy")`` gives the same beads."""
    try:
        from cg import Mapping

        u = ds.to_universe(None)
        pm = Mapping.from_preset(u.atoms, "heavy")
        same = [sorted(map(int, b)) for b in pm.beads] == [sorted(map(int, b)) for b in mp.beads]
        res["heavy_equals_preset_heavy"] = bool(same)
    except Exception as e:  # noqa: BLE001
        res["heavy_equals_preset_heavy"] = f"not checked ({e})"


def run_mapping(name, mp, ds, a, out, epochs, train_s, replicas, aa_ns, quads, net="features"):
    """The shared recipes (cg.forcematching.fit_cg_model, cg.simulate.simulate_cg) for one mapping, then
    every metric; the benchmark adds no science of its own."""
    from cg.evaluate import bonded_js, fes_js, h_r_error, phi_psi, stability
    from cg.forcematching import ForceMatchingConfig, fit_cg_model
    from cg.plots import plot_distributions, plot_fes, plot_hr, plot_stability, plot_training
    from cg.simulate import SimulationConfig, simulate_cg
    from cg.train import TrainResult
    from forcefield.stability import bond_thresholds

    out.mkdir(parents=True, exist_ok=True)
    r: dict = {"n_beads": mp.n_beads, "beads": [list(map(int, b)) for b in mp.beads], "names": list(mp.names)}
    r["mapped_force_rms_sum"] = float(np.sqrt((mp.map_forces(ds.F) ** 2).mean()))
    fm = ForceMatchingConfig(network=net, hidden=32 if net == "schnet" else 128, epochs=epochs, patience=10, lr=2e-3,
                             batch_size=128, force_map=a.force_map, max_seconds=train_s)
    t0 = time.perf_counter()
    model = fit_cg_model(mp, ds, fm, temperature=300.0, device=a.device, seed=a.seed, checkpoint=out / "train.ckpt",
                         resume=False, progress=not a.quiet)
    r["fit_s"] = time.perf_counter() - t0
    mp, pot = model.mapping, model.potential
    Rcg = mp.map_positions(ds.R)
    r["force_map"] = a.force_map
    r["mapped_force_rms"] = model.info["mapped_force_rms"]
    print(f"[{name}] force map {a.force_map}: mapped force RMS {r['mapped_force_rms']:.2f} kcal/mol/Å "
          f"(plain sum {r['mapped_force_rms_sum']:.2f})")
    bonds = mp.bonds
    r["n_bonds"] = len(bonds)
    if quads is not None:
        pp_atoms = phi_psi(ds.R, PHI_ATOMS, PSI_ATOMS)
        pp_ref = phi_psi(Rcg, *quads)
        dphi = np.abs((pp_ref - pp_atoms + 180) % 360 - 180)
        r["bead_vs_atom_phi_psi_mean_abs_deg"] = dphi.mean(0).tolist()
        r["fes_js_bead_vs_atom_60"] = fes_js(pp_atoms, pp_ref, 60)["js"]
    model.save(out / "cg_potential.pt")
    plot_training(TrainResult(**model.history), out / "training.png")
    r["network"] = {"kind": net, **fm.net_kwargs(), "parameters": sum(p.numel() for p in pot.net.parameters())}
    r["training"] = {k: model.info[k] for k in ("epochs", "best_epoch", "seconds_per_epoch", "n_train", "n_val",
                                                 "best_val_rmse", "prior_val_rmse")}
    print(f"[{name}] training: {r['training']}")
    total_steps = int(round(aa_ns * 1e6 / a.dt))
    n_steps = total_steps // replicas
    save_every = max(1, int(round(100 / a.dt)))  # a frame every 100 fs, as the reference
    sim = SimulationConfig(replicas=replicas, n_steps=n_steps, timestep_fs=a.dt, save_every=save_every,
                           friction_per_ps=1.0, temperature=300.0)
    traj = simulate_cg(pot, Rcg, sim, reference=Rcg, device=a.device, seed=a.seed, progress=not a.quiet)
    r0, md_thr = bond_thresholds(Rcg, bonds)
    r["reference_fu_stable_0.5A"] = bool(np.all(np.abs(np.linalg.norm(Rcg[:, bonds[:, 1]] - Rcg[:, bonds[:, 0]],
                                                                      axis=-1) - r0) <= 0.5))
    r["md_stop_thresholds_A"] = np.round(md_thr, 3).tolist()
    traj.save(out / "cg_md.npz")
    R_md = traj.frames()
    r["cg_md"] = {"replicas": replicas, "steps_per_replica": n_steps, "dt_fs": a.dt,
                  "ns_total": replicas * n_steps * a.dt * 1e-6, **traj.speed,
                  "stable_replicas": int(round(traj.stable_fraction * replicas)), "frames": len(R_md),
                  "start": "replicas start from frames drawn from the mapped reference (simulate_cg)"}
    r["bonded_js"] = bonded_js(Rcg, R_md, bonds, 100)
    for key, thr in (("stability", 0.5), ("stability_ref_calibrated", md_thr)):
        st = [stability(traj.replica(b), bonds, r0, thr, save_every * a.dt / 1000, n_steps // save_every)
              if traj.n_valid[b] else {"stable": False, "stable_ps": 0.0} for b in range(replicas)]
        r[key] = {"threshold_A": thr if np.isscalar(thr) else np.round(thr, 3).tolist(),
                  "stable": int(sum(x["stable"] for x in st)), "replicas": replicas,
                  "min_stable_ps": float(min(x["stable_ps"] for x in st)),
                  "mean_stable_ps": float(np.mean([x["stable_ps"] for x in st])), "run_ps": n_steps * a.dt / 1000}
    plot_stability([x["stable_ps"] for x in st], n_steps * a.dt / 1000, out / "stability.png")
    print(f"[{name}] Fu stability (0.5 Å): {r['stability']['stable']}/{replicas} stable "
          f"(reference itself within 0.5 Å: {r['reference_fu_stable_0.5A']})")
    sr, sm = max(1, len(Rcg) // 10000), max(1, len(R_md) // 10000)
    r["h_r_error"] = h_r_error(Rcg[::sr], R_md[::sm])
    plot_distributions(Rcg, R_md, bonds, out / "bonded.png", labels=("AA reference (mapped)", "CG MD"))
    plot_hr(Rcg[::sr], R_md[::sm], out / "h_r.png", labels=("AA reference (mapped)", "CG MD"))
    b = r["bonded_js"]
    if quads is not None:
        pp_cg = phi_psi(R_md, *quads)
        half = len(Rcg) // 2  # sampling-noise floor: reference first half vs second half
        r["fes"] = {"60": fes_js(pp_ref, pp_cg, 60), "36": fes_js(pp_ref, pp_cg, 36),
                    "60_bits": fes_js(pp_ref, pp_cg, 60, base=2)["js"],
                    "ref_half_vs_half_60": fes_js(pp_ref[:half], pp_ref[half:], 60)["js"],
                    "cg_first_vs_second_half_of_runs_60": fes_js(
                        phi_psi(np.concatenate([traj.replica(k)[: n_steps // save_every // 2]
                                                for k in range(replicas)]), *quads),
                        phi_psi(np.concatenate([traj.replica(k)[n_steps // save_every // 2:]
                                                for k in range(replicas)]), *quads), 60)["js"],
                    "frac_phi_positive_ref": float((pp_ref[:, 0] > 0).mean()),
                    "frac_phi_positive_cg": float((pp_cg[:, 0] > 0).mean())}
        plot_fes(pp_ref, pp_cg, out / "fes.png", bins=60, labels=("AA reference (mapped)", "CG MD"))
        f = r["fes"]
        print(f"[{name}] φ/ψ FES JS (60x60, nats): {f['60']['js']:.4f}  (36x36: {f['36']['js']:.4f}; ref half/half "
              f"{f['ref_half_vs_half_60']:.4f}; CG 1st/2nd half {f['cg_first_vs_second_half_of_runs_60']:.4f}; "
              f"n_ref {f['60']['n_ref']}, n_cg {f['60']['n_test']}; share φ>0: ref {f['frac_phi_positive_ref']:.4f}, "
              f"CG {f['frac_phi_positive_cg']:.4f})")
    print(f"[{name}] bonded JS mean/max: bonds {b['bonds_mean']:.4f}/{b['bonds_max']:.4f}  angles "
          f"{b['angles_mean']:.4f}/{b['angles_max']:.4f}  dihedrals {b['dihedrals_mean']:.4f}/{b['dihedrals_max']:.4f}")
    print(f"[{name}] MD-stop/ref-calibrated stability: {r['stability_ref_calibrated']['stable']}/{replicas}; "
          f"h(r) error {r['h_r_error']:.4f}")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (~1-2 min) to check the pipeline")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--out", default="bench_out/cg_alanine", help="folder for plots, model, trajectories")
    ap.add_argument("--frames", type=int, default=None, help="AA reference frames (100 fs apart)")
    ap.add_argument("--replicas", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-seconds", type=float, default=None)
    ap.add_argument("--dt", type=float, default=2.0, help="CG time step, fs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nets", default="features", help="networks for the heavy-atom map (comma list)")
    ap.add_argument("--learned", type=int, default=6, help="beads of a learned map (cg.learn_mapping); 0: skip")
    ap.add_argument("--backbone", type=int, default=1, help="1: also the 'backbone' preset map (FeatureNet); 0: skip")
    ap.add_argument("--force-map", choices=["sum", "optimal"], default="optimal",
                    help="mapped forces: per-bead sum, or the least-noise consistent map (default: %(default)s)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.reference import run_openmm_md

    n_frames = a.frames or (4000 if a.quick else 100000)  # full: 10 ns (force matching needs the statistics)
    replicas = a.replicas or (20 if a.quick else 100)
    epochs = a.epochs or (4 if a.quick else 100)
    train_s = a.train_seconds or (30 if a.quick else 400)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"quick": a.quick, "device": a.device, "threads": a.threads}

    # 1. AA reference ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    ds = run_openmm_md(alanine_dipeptide_pdb(), n_frames=n_frames, save_every=100, timestep_fs=1.0, temperature=300.0,
                       equilibration_steps=20000, seed=a.seed, progress=False)
    t_aa = time.perf_counter() - t0
    aa_ns = n_frames * 100 * 1e-6
    res["aa"] = {"frames": n_frames, "ns": aa_ns, "wall_s": t_aa, "ns_per_day": aa_ns / t_aa * 86400,
                 "atom_steps_per_s": ds.n_atoms * n_frames * 100 / t_aa, "engine": "OpenMM 8 Reference platform"}
    print(f"AA reference: {n_frames} frames, {aa_ns:.2f} ns in {t_aa:.1f} s ({res['aa']['ns_per_day']:.0f} ns/day)")

    # 2.-5. heavy-atom mapping (φ/ψ from beads), then optionally a learned map --------------------------
    mp = heavy_mapping(ds)
    _check_preset(ds, mp, res)
    for net in a.nets.split(","):
        key = f"heavy_{net}"
        res[key] = run_mapping(key, mp, ds, a, out / key, epochs, train_s, replicas, aa_ns, (PHI_BEADS, PSI_BEADS), net)
        res[key]["speed_ratio_cg_over_aa_ns_per_day"] = res[key]["cg_md"]["ns_per_day"] / res["aa"]["ns_per_day"]
    if a.backbone:  # the backbone preset: beads at C(ACE), N, CA, C, N(NME) with the other atoms merged in
        from cg import Mapping

        bb = Mapping.from_preset(ds.to_universe(alanine_dipeptide_pdb()).atoms, "backbone")
        owner = bb.assignment()
        q = [int(owner[i]) for i in (4, 6, 8, 14, 16)]  # C(ACE) N CA C N(NME) atoms of the shipped PDB
        res["backbone_features"] = run_mapping("backbone_features", bb, ds, a, out / "backbone_features", epochs,
                                               train_s, replicas, aa_ns, (tuple(q[:4]), tuple(q[1:])), "features")
        res["backbone_features"]["speed_ratio_cg_over_aa_ns_per_day"] = (
            res["backbone_features"]["cg_md"]["ns_per_day"] / res["aa"]["ns_per_day"])
        print(f"[{key}] speed: CG {res[key]['cg_md']['bead_steps_per_s']:.3g} bead-steps/s, "
              f"{res[key]['cg_md']['ns_per_day']:.0f} ns/day; AA OpenMM {res['aa']['ns_per_day']:.0f} ns/day; "
              f"ratio {res[key]['speed_ratio_cg_over_aa_ns_per_day']:.2f}")
    if a.learned:
        try:
            from cg import learn_mapping
        except ImportError:
            res["learned"] = "cg.learn_mapping not available; not run"
        else:
            t0 = time.perf_counter()
            ml = learn_mapping(ds, a.learned, epochs=30 if a.quick else 60, max_frames=4000, seed=a.seed, progress=False)
            t_l = time.perf_counter() - t0
            print(f"learned map ({a.learned} beads) in {t_l:.0f} s: {[list(map(int, b)) for b in ml.beads]}")
            res["learned"] = run_mapping("learned", ml, ds, a, out / "learned", epochs, train_s * 0.6, replicas, aa_ns,
                                         None, "features")
            res["learned"]["learn_s"] = t_l
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
