"""The stages of ``cgwb run``: each reads its inputs from the run folder and writes its outputs there.

Files in a run folder:

``aa.npz`` / ``topology.pdb``   AA sampling (OpenMM) or the user's trajectory, and its topology
``labels_train.npz`` ``labels_test.npz``  GFN2-xTB labels (or the user's sGDML dataset) for the kernel FF
``kernel.npz``                 kernel force field
``reference.npz``              the AA reference: positions with forces from the chosen source
``mapping.json``               CG mapping
``cg_potential.pt``            force-matched CG potential (priors + network)
``cg_md.npz``                  CG MD bead trajectory
``backmap.pt``                 backmapping model
``backmapped.npz``             CG MD frames backmapped to AA
"""
from __future__ import annotations

import time

from typing import Any

import numpy as np

from forcefield import Dataset, InputError, load_dataset

from .stages import RunContext

SIGMA_GRID = (20, 40, 80)  # σ values tried on a validation split when the config gives none
TRAIN_FRACTION = 0.9  # reference frames: the first 90 % train the mapping/CG/backmap models, the rest is held out


def _device(ctx: RunContext) -> str:
    from cgwb.cli.common import pick_device

    return pick_device(ctx.config["device"])


# --------------------------------------------------------------------------- 1. AA sampling
def coverage_run(d: dict[str, Any]) -> bool:
    """Whether the AA sampling adds the coverage run (config as nested dicts): kernel-FF labels asked for
    (``reference.hot_frames``), a ``sampling.coverage_temperature``, OpenMM on the PDB, no explicit solvent."""
    from forcefield.reference.openmm_md import EXPLICIT

    return bool(d["reference"]["forces"] == "kernel" and d["reference"]["hot_frames"]
                and d["sampling"]["coverage_temperature"] and not d["system"]["topology"]
                and d["system"]["solvent"] not in EXPLICIT)


def aa_sampling(ctx: RunContext) -> dict[str, Any]:
    """OpenMM MD of the configured PDB (default: alanine dipeptide) or the user's topology + trajectory."""
    cfg = ctx.config
    s, smp = cfg["system"], cfg["sampling"]
    if s["topology"]:
        from forcefield import open_universe
        from forcefield.universe import write_universe

        top, traj = cfg.path(s["topology"]), cfg.path(s["trajectory"]) if s["trajectory"] else None
        u = open_universe(top, traj) if traj else open_universe(top)
        ag = u.select_atoms(s["selection"]) if s["selection"] != "all" else u.atoms
        step = max(1, len(u.trajectory) // smp["frames"]) if len(u.trajectory) > smp["frames"] else 1
        ds = Dataset.from_universe(u, selection=s["selection"], step=step, theory="user trajectory")
        import MDAnalysis as mda

        sub = mda.Merge(ag)
        sub.load_new(ds.R[:1].astype(np.float32), order="fac")
        write_universe(sub, ctx.file("topology.pdb"))
    else:
        from forcefield.data import alanine_dipeptide_pdb
        from forcefield.reference import run_openmm_md

        pdb = cfg.path(s["pdb"]) if s["pdb"] else alanine_dipeptide_pdb()
        kw = dict(n_frames=smp["frames"], save_every=smp["save_every"], timestep_fs=smp["timestep_fs"],
                  solvent=s["solvent"], seed=cfg["seed"], progress=ctx.progress,
                  platform=None if s["platform"] == "auto" else s["platform"],
                  constraints=None if smp["constraints"] == "auto" else smp["constraints"],
                  hydrogen_mass=smp["hydrogen_mass"])
        t_md = time.perf_counter()
        if smp["method"] == "remd":
            from forcefield.reference import geometric_temperatures, run_openmm_remd

            T = smp["temperatures"] or geometric_temperatures(s["temperature"], smp["max_temperature"],
                                                              max(2, smp["replicas"]))
            if abs(float(T[0]) - s["temperature"]) > 1e-6:
                raise InputError(f"sampling.temperatures must start at system.temperature ({s['temperature']} K)")
            ds = run_openmm_remd(pdb, temperatures=T, **kw)
            copies = len(T)
        else:
            hot = smp["max_temperature"] if smp["method"] == "hot" else None
            reps = smp["replicas"]
            kw["n_frames"] = max(1, smp["frames"] // reps)
            par = dict(client="local", n_workers=min(smp["workers"], reps)) if smp["workers"] > 1 and reps > 1 else {}
            ds = run_openmm_md(pdb, temperature=s["temperature"], replicas=reps, hot_start_K=hot, **kw, **par)
            copies = reps
        wall = time.perf_counter() - t_md
        if coverage_run(cfg.data):  # frames that only widen the kernel FF's training labels
            hot_T = float(smp["coverage_temperature"])
            cov = run_openmm_md(pdb, temperature=hot_T, **{**kw, "n_frames": smp["coverage_frames"],
                                                           "seed": cfg["seed"] + 1})
            ds.extra.update(hot_R=cov.R, hot_temperature=np.array(hot_T))
        eq_steps, dt = int(ds.extra["equilibration_steps"]), float(ds.extra["timestep_fs"])
        aa_ns = copies * (eq_steps + kw["n_frames"] * smp["save_every"]) * dt * 1e-6  # all copies, equilibration too
        aa_speed = {"aa_ns_simulated": aa_ns, "aa_ns_per_day": aa_ns / wall * 86400.0,
                    "aa_platform": str(ds.extra.get("platform", ""))}
        ctx.file("topology.pdb").write_text(str(ds.extra["pdb"]))
    ds.save(ctx.file("aa.npz"))
    out = {"aa_frames": len(ds), "n_atoms": ds.n_atoms}
    if not s["topology"]:
        out.update(aa_speed)
    if "acceptance" in ds.extra:
        out["remd_acceptance"] = [float(a) for a in np.asarray(ds.extra["acceptance"]).ravel()]
    return out


# --------------------------------------------------------------------------- 2. reference forces
def labels(ctx: RunContext) -> dict[str, Any]:
    """Training/test labels for the kernel FF: the user's sGDML dataset, or GFN2-xTB on AA frames (held-out
    labels from the target temperature only; ``reference.hot_frames`` more training labels, evenly spaced, from
    the sampling's coverage run, so the seed covers states such as φ > 0 the kernel FF's MD may visit)."""
    cfg = ctx.config
    ref = cfg["reference"]
    n_tr, n_te = ref["label_frames"], ref["test_frames"]
    rng = np.random.default_rng(cfg["seed"])
    n_hot = 0
    if ref["dataset"]:
        ds = load_dataset(cfg.path(ref["dataset"]))
        aa = load_dataset(ctx.file("aa.npz"))
        if not np.array_equal(ds.z.astype(int), aa.z.astype(int)):
            raise InputError(f"{ref['dataset']}: atoms differ from the system's ({len(ds.z)} vs {len(aa.z)})")
        idx = rng.permutation(len(ds))
        train, test = ds[idx[:n_tr]], ds[idx[n_tr:n_tr + n_te]]
    else:
        from forcefield.reference import label_dataset

        aa = load_dataset(ctx.file("aa.npz"))
        hot = aa.extra.pop("hot_R", None)  # frames of the sampling's coverage run (sampling.coverage_temperature)
        n = min(len(aa), n_tr + n_te)
        idx = np.sort(rng.choice(len(aa), n, replace=False))
        lab = label_dataset(aa[idx], progress=ctx.progress)
        perm = rng.permutation(n)
        train, test = lab[np.sort(perm[:n_tr])], lab[np.sort(perm[n_tr:])]
        n_hot = min(ref["hot_frames"], 0 if hot is None else len(hot))
        if n_hot:  # coverage: states the target temperature rarely visits but the kernel FF's MD may reach
            hx = Dataset(R=hot[np.linspace(0, len(hot) - 1, n_hot).round().astype(int)], z=aa.z, name=aa.name,
                         theory=f"{aa.theory}, coverage run ({float(aa.extra['hot_temperature']):g} K)")
            extra = label_dataset(hx, progress=ctx.progress)
            train = Dataset.concatenate([train, extra])
    train.save(ctx.file("labels_train.npz"))
    test.save(ctx.file("labels_test.npz"))
    return {"label_train_frames": len(train), "label_test_frames": len(test), "label_hot_frames": n_hot}


def kernel_train(ctx: RunContext) -> dict[str, Any]:
    """Fit the kernel force field on the training labels (σ chosen on a validation split) and test it."""
    from forcefield import KernelForceField

    cfg = ctx.config
    tr, te = load_dataset(ctx.file("labels_train.npz")), load_dataset(ctx.file("labels_test.npz"))
    sigma = cfg["reference"]["sigma"] or SIGMA_GRID
    # the preconditioned CG solver (Schur-complement Nyström preconditioner) is faster than a direct Cholesky
    # solve here: 200 alanine-dipeptide frames, 27 permutations, σ 40: 22 s against 40 s on 2 cores
    ff = KernelForceField(sigma=sigma, device=_device(ctx), progress=ctx.progress)
    ff.fit(tr.R, tr.z, F=tr.F, E=tr.E, seed=cfg["seed"])
    ff.save(ctx.file("kernel_seed.npz"))
    E, F = ff.predict(te.R)
    return {"kernel_sigma": float(ff.sigma_),
            "kernel_sigma_scores": ff.info.get("sigma_scores", {}), "kernel_n_perms": ff.info.get("n_perms"),
            "kernel_seed_force_mae": float(np.abs(F - te.F).mean()),
            "kernel_seed_energy_mae": float(np.abs(E - te.E).mean()),
            "kernel_seed_train_frames": len(tr), "kernel_test_frames": len(te)}


def kernel_learn(ctx: RunContext) -> dict[str, Any]:
    """Active learning on the kernel FF's own MD (uncertainty-picked frames labelled with GFN2-xTB, refits) until
    its error on its own MD frames is at most ``active.target_ratio`` × its held-out error; writes ``kernel.npz``."""
    from forcefield import KernelForceField
    from forcefield.kernel.active import ActiveConfig, active_learn, plot_rounds

    cfg = ctx.config
    a = cfg["active"]
    ff = KernelForceField.load(ctx.file("kernel_seed.npz"), device=_device(ctx))
    tr, te = load_dataset(ctx.file("labels_train.npz")), load_dataset(ctx.file("labels_test.npz"))
    out: dict[str, Any] = {"kernel_active_rounds": 0}
    if a["rounds"] > 0:
        km = cfg["kernel_md"]  # explore with the sampler the reference will use (its ladders need whole replicas)
        aa = load_dataset(ctx.file("aa.npz"))
        rng = np.random.default_rng(cfg["seed"] + 5)
        starts = aa.R[np.sort(rng.choice(len(aa), a["replicas"], replace=len(aa) < a["replicas"]))]
        acfg = ActiveConfig(max_rounds=a["rounds"], replicas=a["replicas"], md_steps=a["md_steps"],
                            save_every=a["save_every"], frames_per_round=a["frames_per_round"],
                            spot_checks=a["spot_checks"], target_ratio=a["target_ratio"],
                            uncertain_ratio=a["uncertain_ratio"],
                            temperature=cfg["system"]["temperature"], seed=cfg["seed"], progress=ctx.progress,
                            temperatures=km["temperatures"], max_temperature=km["max_temperature"],
                            exchange_every=km["exchange_every"], hydrogen_mass=km["hydrogen_mass"],
                            timestep_fs=km["timestep_fs"])
        res = active_learn(ff, tr, te, starts, config=acfg, workdir=ctx.file(f".active-{ctx.fingerprint[:12]}"))
        ff = res.model
        plot_rounds(res.log, ctx.file("kernel_active.png"))
        with_json = [{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in r.items()}
                     for r in res.log]
        out.update({"kernel_active_rounds": res.rounds, "kernel_active_converged": bool(res.converged),
                    "kernel_active_log": with_json, "kernel_train_frames": len(res.train)})
    else:
        out["kernel_train_frames"] = len(tr)
    ff.save(ctx.file("kernel.npz"))
    E, F = ff.predict(te.R)
    out.update({"kernel_force_mae": float(np.abs(F - te.F).mean()), "kernel_energy_mae": float(np.abs(E - te.E).mean())})
    return out


def kernel_md(ctx: RunContext) -> dict[str, Any]:
    """The AA reference: kernel-FF Langevin MD (:func:`forcefield.kernel.md.sample_reference`), its forces
    the FF's, started from frames of the seed sampling."""
    from forcefield import KernelForceField
    from forcefield.kernel.md import sample_reference

    cfg = ctx.config
    km = cfg.section("kernel_md")
    ff = KernelForceField.load(ctx.file("kernel.npz"), device=_device(ctx))
    aa = load_dataset(ctx.file("aa.npz"))
    rng = np.random.default_rng(cfg["seed"] + 7)
    starts = aa.R[np.sort(rng.choice(len(aa), km.replicas, replace=len(aa) < km.replicas))]
    ref, out = sample_reference(ff, starts, km, temperature=float(cfg["system"]["temperature"]), seed=cfg["seed"],
                                progress=ctx.progress)
    ref.name = aa.name
    ref.save(ctx.file("reference.npz"))
    out = {f"kernel_md_{k}": v for k, v in out.items()}
    out.update(_reference_floor(ctx, ref))
    return out


def _reference_floor(ctx: RunContext, ref: Dataset) -> dict[str, Any]:
    """The reference's own φ/ψ sampling noise: JS of its first half of replicas against the second half."""
    from cg.evaluate import fes_js, phi_psi
    from forcefield import open_universe
    from forcefield.universe import backbone_phi_psi_atoms

    quads = backbone_phi_psi_atoms(open_universe(ctx.file("topology.pdb"), to_guess=("types", "masses")))
    if quads is None or len(ref) < 4:
        return {}
    pp = phi_psi(ref.R, *quads)
    half = len(pp) // 2
    return {"reference_fes_js_floor": fes_js(pp[:half], pp[half:], bins=36)["js"],
            "reference_frac_phi_positive": float((pp[:, 0] > 0).mean())}


def kernel_check(ctx: RunContext) -> dict[str, Any]:
    """Spot-check of the kernel force field on its own MD: random reference frames relabelled with GFN2-xTB.

    ``kernel_selfconsistency`` = force MAE on these frames / force MAE on the held-out labels. Near 1, the
    reference ensemble lies where the kernel FF was validated; far above 1, its MD wandered where it was
    never trained and the reference (and every later stage) is not to be trusted.
    """
    from forcefield import KernelForceField
    from forcefield.reference import label_dataset

    cfg = ctx.config
    n = cfg["reference"]["spot_frames"]
    ref = load_dataset(ctx.file("reference.npz"))
    rng = np.random.default_rng(cfg["seed"] + 11)
    spot = label_dataset(ref[np.sort(rng.choice(len(ref), min(n, len(ref)), replace=False))], progress=ctx.progress)
    spot.save(ctx.file("labels_spot.npz"))
    ff = KernelForceField.load(ctx.file("kernel.npz"), device=_device(ctx))
    te = load_dataset(ctx.file("labels_test.npz"))
    _, F_te = ff.predict(te.R)
    E_sp, F_sp = ff.predict(spot.R)
    held, own = float(np.abs(F_te - te.F).mean()), float(np.abs(F_sp - spot.F).mean())
    if not held > 0:
        raise InputError("the kernel force field's held-out force error is zero: no held-out labels to compare")
    out = {"kernel_spot_force_mae": own, "kernel_selfconsistency": own / held, "kernel_spot_frames": len(spot),
           "kernel_spot_energy_mae": float(np.abs((E_sp - E_sp.mean()) - (spot.E - spot.E.mean())).mean())}
    if cfg["reference"]["max_selfconsistency"] and out["kernel_selfconsistency"] > cfg["reference"]["max_selfconsistency"]:
        ctx.log(f"[kernel_check] WARNING: the kernel FF's force error on its own MD frames is "
                f"{out['kernel_selfconsistency']:.1f}x its held-out error: the reference left the FF's domain "
                "(more active-learning rounds or seed sampling needed)")
    return out


def reference_direct(ctx: RunContext) -> dict[str, Any]:
    """The AA reference without a kernel FF: trajectory forces, OpenMM forces, or GFN2-xTB labels."""
    cfg = ctx.config
    src = cfg["reference"]["forces"]
    aa = load_dataset(ctx.file("aa.npz"))
    if src == "trajectory":
        if aa.F is None:
            raise InputError(f"{cfg['system']['trajectory']}: reference.forces = 'trajectory' but it has no forces")
        ref = aa
    elif src == "openmm" and aa.F is not None and not cfg["system"]["topology"]:
        ref = aa  # OpenMM sampled these frames: its forces are saved with them (explicit solvent: the solute's
        # total forces, water included, which a solvent-free CG model matches; no water to recompute them from)
    elif src == "openmm":
        from forcefield.reference import openmm_energy_forces

        if cfg["system"]["solvent"] == "tip3p":
            raise InputError("reference.forces = 'openmm' with explicit solvent needs frames sampled here "
                             "(a user trajectory has no water coordinates to recompute forces from)")
        E, F = openmm_energy_forces(ctx.file("topology.pdb"), aa.R, solvent=cfg["system"]["solvent"])
        ref = aa[:]
        ref.E, ref.F = E, F
    else:  # xtb
        from forcefield.reference import label_dataset

        ref = label_dataset(aa, progress=ctx.progress)
    ref.save(ctx.file("reference.npz"))
    return {"reference_frames": len(ref), "reference_forces": src}
