"""``cgwb kernel``: train, test, label and run MD with the kernel global force field (sGDML class)."""
from __future__ import annotations

import argparse
import json
import time

from .common import add_device, add_group, add_quiet, pick_device


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("train", help="train a kernel force field on an sGDML-format dataset",
                     description="Train a kernel force field (Matérn-5/2 Hessian kernel on inverse distances, "
                                 "symmetries detected from the data) on energy-stratified training frames; "
                                 "several --sigma values are compared on validation frames.")
    p.add_argument("dataset", help="sGDML-format .npz (R Å, z, F kcal/mol/Å, E kcal/mol)")
    p.add_argument("-o", "--out", default="kernel_ff.npz", help="model file (default: %(default)s)")
    p.add_argument("-n", "--n-train", type=int, default=200, help="training frames (default: %(default)s)")
    p.add_argument("--n-valid", type=int, default=200, help="validation frames (default: %(default)s)")
    p.add_argument("--sigma", type=float, nargs="+", default=[50.0],
                   help="length scale(s); several are compared on the validation set (default: 50)")
    p.add_argument("--lam", type=float, default=1e-10, help="regulariser (default: %(default)s)")
    p.add_argument("--solver", choices=["auto", "cholesky", "cg"], default="auto")
    p.add_argument("--rtol", type=float, default=1e-3, help="PCG relative residual (default: %(default)s)")
    p.add_argument("--energy-constraints", action="store_true",
                   help="also fit the training energies (sGDML's use_E_cstr; needs E in the dataset)")
    p.add_argument("--preconditioner", choices=["auto", "schur", "lean", "woodbury"], default="auto",
                   help="PCG preconditioner (default: %(default)s = schur where its pivoted factor fits "
                        "--max-memory, else lean)")
    p.add_argument("--rank-per-point", type=int, default=None,
                   help="Woodbury: leading directions kept per inducing geometry (default: all)")
    p.add_argument("--n-inducing", type=int, default=None,
                   help="inducing geometries of the preconditioner (default: from the problem size)")
    p.add_argument("--max-memory", type=float, default=4.0,
                   help="GiB for the preconditioner's factor (default: %(default)s)")
    p.add_argument("--no-sym", action="store_true", help="do not detect permutational symmetries")
    p.add_argument("--std-method", choices=["separable", "posterior"], default="separable",
                   help="force std of the saved model: fast separable approximation (default) or the GP's "
                        "force posterior (exact/low-rank, tens of predictions per geometry)")
    p.add_argument("--checkpoint", default=None, help="PCG checkpoint file (resumed from if present)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_train)

    p = g.add_parser("test", help="errors of a model on a dataset",
                     description="Energy and force errors (MAE, RMSE) of a model (ours or an sGDML model file) "
                                 "on frames of a dataset, and prediction throughput.")
    p.add_argument("model", help="model .npz (cgworkbench or sGDML)")
    p.add_argument("dataset", help="sGDML-format .npz with reference E and F")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    add_device(p)
    p.set_defaults(func=_test)

    p = g.add_parser("label", help="label a dataset or MDAnalysis trajectory with a model",
                     description="Replace energies and forces of a dataset (or of a topology+trajectory "
                                 "MDAnalysis reads) by the model's predictions.")
    p.add_argument("model")
    p.add_argument("input", help=".npz dataset, or a topology file (with --traj)")
    p.add_argument("--traj", default=None, help="trajectory file when INPUT is a topology")
    p.add_argument("--select", default="all", help="MDAnalysis selection (default: all)")
    p.add_argument("-o", "--out", required=True, help="output .npz")
    add_device(p)
    p.set_defaults(func=_label)

    p = g.add_parser("md", help="Langevin MD with a model on many replicas at once",
                     description="BAOAB Langevin MD on the model's surface, B replicas in one batch; replicas "
                                 "whose bonds stretch by more than --max-bond-change Å are stopped.")
    p.add_argument("model")
    p.add_argument("start", help=".npz dataset; its first frame (or --frame) starts every replica")
    p.add_argument("-o", "--out", default="kernel_md.npz", help="output dataset .npz of all valid frames")
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("-B", "--replicas", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--dt", type=float, default=0.5, help="fs (default: %(default)s)")
    p.add_argument("-T", "--temperature", type=float, default=300.0)
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--max-bond-change", type=float, default=0.5, help="Å (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_md)

    p = g.add_parser("learn", help="active learning: grow the training set from the model's own MD",
                     description="Rounds of kernel-FF MD on many replicas; the frames with the largest predicted "
                                 "force std (spread out in descriptor space) are labelled with GFN2-xTB and added, "
                                 "and the model is refitted, until its force MAE on random frames of its own MD "
                                 "is at most --target-ratio times its held-out MAE. Resumable: run again with "
                                 "the same --out folder to continue.")
    p.add_argument("model", help="fitted model .npz")
    p.add_argument("train", help="its training set (.npz with R, z, F, E)")
    p.add_argument("test", help="held-out labelled frames (.npz) for the held-out MAE")
    p.add_argument("-o", "--out", default="kernel_learn", help="folder for state, log, plot and the final model")
    p.add_argument("--starts", default=None, help=".npz whose frames start the replicas (default: the training set)")
    p.add_argument("--rounds", type=int, default=3, help="labelling rounds at most (default: %(default)s)")
    p.add_argument("-B", "--replicas", type=int, default=16)
    p.add_argument("--steps", type=int, default=500, help="MD steps per replica and round")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--dt", type=float, default=1.0, help="fs (default: %(default)s)")
    p.add_argument("-T", "--temperature", type=float, default=300.0)
    p.add_argument("--frames", type=int, default=30, help="frames labelled per round (default: %(default)s)")
    p.add_argument("--spot-checks", type=int, default=20, help="random MD frames labelled per round")
    p.add_argument("--target-ratio", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_learn)


def _train(a: argparse.Namespace) -> int:
    import numpy as np

    from forcefield import KernelForceField, load_dataset
    from forcefield.errors import InputError
    from forcefield.kernel.model import stratified_split

    ds = load_dataset(a.dataset)
    if ds.F is None:
        raise InputError(f"{a.dataset}: training needs forces F")
    n_valid = a.n_valid if len(a.sigma) > 1 else 0
    if ds.E is not None:
        tr, va = stratified_split(ds.E, a.n_train, n_valid, seed=a.seed)
    else:
        p = np.random.default_rng(a.seed).permutation(len(ds))
        if a.n_train + n_valid > len(ds):
            raise InputError(f"{a.dataset}: {len(ds)} frames, asked for {a.n_train}+{n_valid}")
        tr, va = np.sort(p[:a.n_train]), np.sort(p[a.n_train:a.n_train + n_valid])
    ff = KernelForceField(sigma=a.sigma if len(a.sigma) > 1 else a.sigma[0], lam=a.lam,
                          perms=None if a.no_sym else "auto", solver=a.solver, rtol=a.rtol,
                          energy_constraints=a.energy_constraints, preconditioner=a.preconditioner,
                          rank_per_point=a.rank_per_point, std_method=a.std_method,
                          n_inducing=a.n_inducing, max_memory_gb=a.max_memory,
                          device=pick_device(a.device), checkpoint=a.checkpoint, progress=not a.quiet)
    t0 = time.perf_counter()
    ff.fit(ds.R[tr], ds.z, F=ds.F[tr], E=None if ds.E is None else ds.E[tr],
           valid=(ds.R[va], ds.F[va]) if len(va) else None)
    dt = time.perf_counter() - t0
    ff.save(a.out)
    print(f"{ff!r}\ntrained in {dt:.1f} s, solver {ff.info.get('solver')}"
          + (", energy constraints" if a.energy_constraints else "")
          + (f", {ff.info['cg_iterations']} PCG iterations" if "cg_iterations" in ff.info else ""))
    if "sigma_scores" in ff.info:
        for s, v in ff.info["sigma_scores"].items():
            print(f"  sigma {s:g}: validation force MAE {v:.4f} kcal/mol/Å")
    print(f"wrote {a.out}")
    return 0


def _test(a: argparse.Namespace) -> int:
    import numpy as np

    from forcefield import KernelForceField, load_dataset
    from forcefield.errors import InputError

    ff = KernelForceField.load(a.model, device=pick_device(a.device))
    ds = load_dataset(a.dataset)
    if a.max_frames:
        ds = ds[:a.max_frames]
    if ds.F is None:
        raise InputError(f"{a.dataset}: testing needs reference forces F")
    t0 = time.perf_counter()
    E, F = ff.predict(ds.R)
    dt = time.perf_counter() - t0
    out = {"frames": len(ds), "force_mae": float(np.abs(F - ds.F).mean()),
           "force_rmse": float(np.sqrt(((F - ds.F) ** 2).mean())), "geometries_per_s": len(ds) / dt}
    if ds.E is not None:
        out["energy_mae"] = float(np.abs(E - ds.E).mean())
        out["energy_rmse"] = float(np.sqrt(((E - ds.E) ** 2).mean()))
    print(f"{ff!r} on {len(ds)} frames of {a.dataset}")
    print(f"  forces  MAE {out['force_mae']:.4f}  RMSE {out['force_rmse']:.4f} kcal/mol/Å")
    if "energy_mae" in out:
        print(f"  energy  MAE {out['energy_mae']:.4f}  RMSE {out['energy_rmse']:.4f} kcal/mol")
    print(f"  {out['geometries_per_s']:.0f} geometries/s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


def _label(a: argparse.Namespace) -> int:
    from forcefield import KernelForceField, load_dataset, open_universe
    from forcefield.kernel.md import label_dataset, label_universe

    ff = KernelForceField.load(a.model, device=pick_device(a.device))
    if a.traj or not str(a.input).endswith(".npz"):
        u = open_universe(a.input, *([a.traj] if a.traj else []))
        out = label_universe(ff, u, selection=a.select)
    else:
        out = label_dataset(ff, load_dataset(a.input))
    out.save(a.out)
    print(out.summary())
    print(f"wrote {a.out}")
    return 0


def _md(a: argparse.Namespace) -> int:
    from forcefield import KernelForceField, load_dataset
    from forcefield.kernel.md import run_md, trajectory_to_dataset

    ff = KernelForceField.load(a.model, device=pick_device(a.device))
    start = load_dataset(a.start)
    t0 = time.perf_counter()
    traj = run_md(ff, start.R[a.frame], n_steps=a.steps, n_replicas=a.replicas, save_every=a.save_every,
                  dt_fs=a.dt, temperature=a.temperature, friction_per_ps=a.friction, seed=a.seed,
                  max_bond_change=a.max_bond_change, progress=not a.quiet)
    dt = time.perf_counter() - t0
    out = trajectory_to_dataset(traj, ff.z)
    out.save(a.out)
    ps = a.steps * a.dt / 1000
    print(f"{a.replicas} replicas x {ps:g} ps in {dt:.1f} s ({a.replicas * ps / dt * 86.4:.2f} ns/day total); "
          f"{len(traj.stopped)} replicas stopped (bond change > {a.max_bond_change} Å)")
    for b, step, why in traj.stopped:
        print(f"  replica {b}: step {step}: {why}")
    print(f"wrote {a.out}: {len(out)} frames")
    return 0


def _learn(a: argparse.Namespace) -> int:
    from forcefield import KernelForceField, load_dataset
    from forcefield.kernel.active import LOG_FIELDS, ActiveConfig, active_learn, plot_rounds

    ff = KernelForceField.load(a.model, device=pick_device(a.device))
    train, test = load_dataset(a.train), load_dataset(a.test)
    starts = load_dataset(a.starts).R if a.starts else train.R
    cfg = ActiveConfig(max_rounds=a.rounds, replicas=a.replicas, md_steps=a.steps, save_every=a.save_every,
                       timestep_fs=a.dt, temperature=a.temperature, frames_per_round=a.frames,
                       spot_checks=a.spot_checks, target_ratio=a.target_ratio, seed=a.seed, progress=not a.quiet)
    res = active_learn(ff, train, test, starts, config=cfg, workdir=a.out)
    plot = plot_rounds(res.log, f"{a.out}/active_rounds.png")
    cols = [k for k in LOG_FIELDS if not k.endswith("_s") and any(k in r for r in res.log)]
    print(" ".join(f"{k:>12s}" for k in cols))
    for r in res.log:
        print(" ".join(f"{r.get(k, float('nan')):12.4g}" if not isinstance(r.get(k), (int, str)) else f"{r[k]:>12}"
                       for k in cols))
    print(("converged" if res.converged else "not converged") + f" after {res.rounds} labelling round(s); "
          f"{len(res.train)} training frames")
    print(f"wrote {a.out}/kernel.npz, train.npz, active_log.json/.csv, {plot}")
    return 0
