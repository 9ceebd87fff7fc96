"""``cgwb cg``: CG potential by force matching (train), CG Langevin MD (simulate), metrics (evaluate)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_device, add_group, add_quiet, pick_device


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("train", help="fit priors + a SchNet-style network to mapped forces (force matching)",
                     description="Map an all-atom dataset (.npz with R, F) with a mapping JSON, fit Boltzmann-"
                                 "inversion priors, train a network (--net) by force matching (train/val split, early "
                                 "stopping, checkpoint/resume) and save the CG potential (.pt).")
    p.add_argument("dataset", help="all-atom .npz (sGDML format, forces required)")
    p.add_argument("-m", "--mapping", required=True, help="mapping JSON (cgwb map ...)")
    p.add_argument("-o", "--out", default="cg_potential.pt", help="output potential (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT.ckpt)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("-T", "--temperature", type=float, default=300.0, help="K, for Boltzmann inversion")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (the last part of each replica)")
    p.add_argument("--patience", type=int, default=25, help="epochs without validation gain before stopping")
    p.add_argument("--net", choices=["features", "schnet"], default="features",
                   help="features: MLP over internal coordinates (fast, CGnet-style); schnet: message passing "
                        "with bead-type embeddings (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=None, help="width (default: 128 features, 32 schnet)")
    p.add_argument("--layers", type=int, default=3, help="hidden layers of the features MLP")
    p.add_argument("--rbf", type=int, default=16, help="radial basis size (schnet)")
    p.add_argument("--interactions", type=int, default=2, help="interaction blocks (schnet)")
    p.add_argument("--cutoff", type=float, default=10.0, help="Å (schnet)")
    p.add_argument("--fourier", type=int, default=6, help="Fourier terms per dihedral prior")
    p.add_argument("--priors-only", action="store_true", help="no network: Boltzmann-inversion priors only")
    p.add_argument("--force-map", choices=["sum", "optimal"], default="sum",
                   help="sum: each bead's atom forces summed; optimal: the consistent force map with the least "
                        "noise on this dataset (Krämer et al. 2023; only for data without bond constraints) "
                        "(default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--plot", default=None, help="PNG of the learning curves")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_train)

    p = g.add_parser("simulate", help="CG Langevin MD (BAOAB), many replicas, instability stop",
                     description="Run CG Langevin MD with a trained potential from starting frames of a dataset "
                                 "(mapped with --mapping) or of a CG .npz; writes all frames to OUT (.npz) and, "
                                 "with --traj, one MDAnalysis trajectory per replica (+ PDB topology).")
    p.add_argument("model", help="CG potential (.pt from cgwb cg train)")
    p.add_argument("start", help=".npz with frames to start from (all-atom with --mapping, else CG beads)")
    p.add_argument("-m", "--mapping", default=None, help="mapping JSON to map an all-atom START")
    p.add_argument("-o", "--out", default="cg_md.npz", help="frames of every replica (.npz)")
    p.add_argument("--traj", default=None, help="also write replicas with MDAnalysis, e.g. run.dcd -> run_r0.dcd ...")
    p.add_argument("-r", "--replicas", type=int, default=8)
    p.add_argument("-n", "--steps", type=int, default=10000, help="steps per replica")
    p.add_argument("--dt", type=float, default=2.0, help="fs")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("-T", "--temperature", type=float, default=None, help="K (default: the model's)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--max-bond-dev", type=float, default=0.5, help="Å; stop a replica past it (<=0: off)")
    p.add_argument("--widen", type=float, default=1.5,
                   help="per-bond stop threshold max(--max-bond-dev, WIDEN x the largest deviation in the starting "
                        "frames), the stability rule of the pipeline (0: a fixed --max-bond-dev)")
    p.add_argument("--compile", action="store_true",
                   help="compile the MD step with torch.compile (faster long runs; compiling takes a while)")
    p.add_argument("--bead-masses", choices=["mapped", "represented"], default="mapped",
                   help="masses in the dynamics: the model's (mapped atoms) or every atom counted once, unmapped "
                        "atoms given to the nearest bead (needs --mapping; heavier beads allow a larger --dt; "
                        "the sampled distribution is the same)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_simulate)

    p = g.add_parser("evaluate", help="bonded JS, φ/ψ FES JS, stability, h(r) of two trajectories + plots",
                     description="Compare TEST frames with REF frames: JS divergences of bond/angle/dihedral "
                                 "distributions, φ/ψ free-energy surface JS (with --phi/--psi), Fu et al. "
                                 "stability, h(r) error; PNG plots and a JSON report. Inputs: .npz datasets "
                                 "(mapped with --mapping when they are all-atom) or runs of cgwb cg simulate.")
    p.add_argument("ref", help="reference .npz")
    p.add_argument("test", help="test .npz (e.g. from cgwb cg simulate)")
    p.add_argument("-m", "--mapping", default=None, help="mapping JSON for all-atom inputs (and the bead bonds)")
    p.add_argument("--model", default=None, help="CG potential: take the bead bonds from it")
    p.add_argument("--phi", type=int, nargs=4, default=None, metavar="I", help="φ bead/atom indices (0-based)")
    p.add_argument("--psi", type=int, nargs=4, default=None, metavar="I", help="ψ bead/atom indices (0-based)")
    p.add_argument("--fes-bins", type=int, default=60)
    p.add_argument("--bins", type=int, default=100, help="bins of the bonded histograms")
    p.add_argument("--threshold", type=float, default=0.5, help="Å, stability threshold")
    p.add_argument("--plots", default=None, help="folder for PNG plots")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=_evaluate)


# ----------------------------------------------------------------------------- helpers
def _frames(path: str, mapping):
    """(frames (M, n, 3), forces or None, per-run list or None, dt_ps, bonds or None) from an .npz."""
    import numpy as np

    from forcefield.errors import InputError
    from forcefield.fileio import load_npz

    d = load_npz(path)
    if "R" not in d:
        raise InputError(f"{path}: no array 'R' of positions")
    R = np.asarray(d["R"], dtype=float)
    if "n_valid" in d:  # a CG trajectory (cgwb cg simulate, cgwb run)
        from cg.simulate import CGTrajectory

        t = CGTrajectory.load(path)
        return t.frames(), None, t.runs(), t.dt_ps, t.bonds, int(t.R.shape[0])
    F = np.asarray(d["F"], dtype=float) if "F" in d else None
    if mapping is not None and R.shape[1] == mapping.n_atoms:
        R = mapping.map_positions(R)
        F = mapping.map_forces(F) if F is not None else None
    elif mapping is not None and R.shape[1] != mapping.n_beads:
        raise InputError(f"{path}: {R.shape[1]} particles, but the mapping has {mapping.n_atoms} atoms "
                         f"and {mapping.n_beads} beads")
    dt = float(np.diff(d["times_fs"][:2])[0]) / 1000 if "times_fs" in d and len(d["times_fs"]) > 1 else 1.0
    return R, F, None, dt, None, None


def _mapping(path: str | None, dataset: str | None = None):
    if path is None:
        return None
    from cg import Mapping

    mp = Mapping.load(path)
    if mp.atom_bonds is None and dataset is not None:
        from forcefield import load_dataset
        from forcefield.geometry import covalent_bonds

        ds = load_dataset(dataset)
        mp.atom_bonds = covalent_bonds(ds.R[0], ds.z)
    return mp


# ----------------------------------------------------------------------------- commands
def _train(a: argparse.Namespace) -> int:
    import numpy as np

    from cg.forcematching import ForceMatchingConfig, fit_cg_model
    from cg.plots import plot_training
    from forcefield import load_dataset

    mp = _mapping(a.mapping, a.dataset)
    ds = load_dataset(a.dataset)
    net = "none" if a.priors_only else a.net
    cfg = ForceMatchingConfig.build(dict(network=net, hidden=a.hidden, layers=a.layers, n_rbf=a.rbf,
                                         interactions=a.interactions, cutoff=a.cutoff, n_fourier=a.fourier,
                                         epochs=a.epochs, patience=a.patience, batch_size=a.batch, lr=a.lr,
                                         val_fraction=a.val, force_map=a.force_map, max_seconds=a.max_seconds),
                                    source="cgwb cg train")
    model = fit_cg_model(mp, ds, cfg, temperature=a.temperature, device=pick_device(a.device), seed=a.seed,
                         checkpoint=a.checkpoint or str(a.out) + ".ckpt", resume=not a.no_resume,
                         progress=not a.quiet, log=print)
    if not a.quiet and model.potential.priors is not None:
        print(model.potential.priors.describe())
    if model.history:
        i = model.info
        print(f"best validation force RMSE {i['best_val_rmse']:.3f} kcal/mol/Å (epoch {i['best_epoch']}; priors "
              f"only {i['prior_val_rmse']:.3f}); {np.nan_to_num(i['seconds_per_epoch']):.1f} s/epoch")
        if a.plot:
            from cg.train import TrainResult

            plot_training(TrainResult(**model.history), a.plot)
    model.save(a.out)
    print(f"wrote {a.out}: {model.potential.n_beads} beads, {len(model.mapping.bonds)} bonds")
    return 0


def _simulate(a: argparse.Namespace) -> int:
    from cg.potential import CGPotential
    from cg.simulate import SimulationConfig, simulate_cg
    from forcefield.errors import InputError

    dev = pick_device(a.device)
    pot = CGPotential.load(a.model, dev)
    mapping = _mapping(a.mapping, a.start)
    if a.bead_masses == "represented" and mapping is None:
        raise InputError("--bead-masses represented needs --mapping (the atoms each bead stands for)")
    R, *_ = _frames(a.start, mapping)
    if R.shape[1] != pot.n_beads:
        raise InputError(f"{a.start}: frames have {R.shape[1]} particles, the model has {pot.n_beads} beads "
                         "(give --mapping for all-atom frames)")
    cfg = SimulationConfig.build(dict(replicas=a.replicas, n_steps=a.steps, timestep_fs=a.dt, save_every=a.save_every,
                                      friction_per_ps=a.friction, temperature=a.temperature,
                                      stop=a.max_bond_dev > 0, stop_base=a.max_bond_dev if a.max_bond_dev > 0 else 0.5,
                                      stop_widen=a.widen, compile=a.compile), source="cgwb cg simulate")
    traj = simulate_cg(pot, R, cfg, reference=R if a.widen > 0 else None, device=dev, seed=a.seed,
                       progress=not a.quiet,
                       masses=mapping.represented_masses() if a.bead_masses == "represented" else None)
    sp = traj.speed
    print(f"{traj.n_replicas} replicas x {a.steps} steps of {a.dt:g} fs: {sp['bead_steps_per_s']:.3g} bead-steps/s, "
          f"{sp['ns_per_day']:.1f} ns/day; {int(round(traj.stable_fraction * traj.n_replicas))}/{traj.n_replicas} stable")
    traj.save(a.out)
    print(f"wrote {a.out}")
    if a.traj:
        from cg.md import write_cg_trajectory

        from pathlib import Path as _P

        p = _P(a.traj)
        for b in range(traj.n_replicas):
            if traj.n_valid[b]:
                q = p if traj.n_replicas == 1 else p.with_name(f"{p.stem}_r{b}{p.suffix}")
                print(f"wrote {write_cg_trajectory(q, traj.replica(b), traj.names, traj.bonds, traj.masses, traj.dt_ps)}")
    return 0 if traj.stable_fraction == 1.0 else 1


def _evaluate(a: argparse.Namespace) -> int:
    import numpy as np

    from cg.evaluate import evaluate_pair, phi_psi
    from forcefield.errors import InputError

    mp = _mapping(a.mapping, a.ref if a.ref.endswith(".npz") else None)
    ref, _, _, _, rb, _ = _frames(a.ref, mp)
    test, _, runs, dt, tb, n_saved = _frames(a.test, mp)
    if a.model:
        from cg.potential import CGPotential

        bonds = CGPotential.load(a.model).bonds.numpy()
    elif mp is not None:
        bonds = mp.bonds
    elif tb is not None or rb is not None:
        bonds = tb if tb is not None else rb
    else:
        raise InputError("no bead bonds: give --model, --mapping, or a run of cgwb cg simulate")
    out = evaluate_pair(ref, test, bonds, phi_quad=a.phi, psi_quad=a.psi, fes_bins=a.fes_bins, bins=a.bins,
                        threshold=a.threshold, test_dt_ps=dt, test_runs=runs, run_frames=n_saved)
    b = out["bonded_js"]
    print(f"bonded JS (nats) mean/max: bonds {b['bonds_mean']:.4f}/{b['bonds_max']:.4f}, angles "
          f"{b['angles_mean']:.4f}/{b['angles_max']:.4f}, dihedrals {b['dihedrals_mean']:.4f}/{b['dihedrals_max']:.4f}")
    if "fes" in out:
        f = out["fes"]
        print(f"φ/ψ FES JS {f['js']:.4f} ({f['grid']} grid, n_ref {f['n_ref']}, n_test {f['n_test']})")
    s = out["stability"]
    print(f"stability (> {s['threshold']} Å): {s['n_stable']}/{s['n_runs']} runs stable, min {s['min_stable_ps']:.1f} ps")
    print(f"h(r) error {out['h_r_error']:.4f}")
    if a.plots:
        from cg.plots import plot_distributions, plot_fes, plot_hr

        d = Path(a.plots)
        plot_distributions(ref, test, bonds, d / "bonded.png")
        plot_hr(ref, test, d / "h_r.png")
        if a.phi and a.psi:
            plot_fes(phi_psi(ref, a.phi, a.psi), phi_psi(test, a.phi, a.psi), d / "fes.png", a.fes_bins)
        print(f"plots in {d}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else float(o)))
    return 0
