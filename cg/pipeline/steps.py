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

from typing import Any

import numpy as np

from forcefield import Dataset, InputError, load_dataset

from .stages import RunContext

TRAIN_FRACTION = 0.9  # reference frames: the first 90 % train the mapping/CG/backmap models, the rest is held out


def _device(ctx: RunContext) -> str:
    from cg.cli.common import pick_device

    return pick_device(ctx.config["device"])


# --------------------------------------------------------------------------- 1. AA sampling
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
        ds = run_openmm_md(pdb, n_frames=smp["frames"], save_every=smp["save_every"], timestep_fs=smp["timestep_fs"],
                           temperature=s["temperature"], solvent=s["solvent"], seed=cfg["seed"], progress=ctx.progress)
        ctx.file("topology.pdb").write_text(str(ds.extra["pdb"]))
    ds.save(ctx.file("aa.npz"))
    return {"aa_frames": len(ds), "n_atoms": ds.n_atoms}


# --------------------------------------------------------------------------- 2. reference forces
def labels(ctx: RunContext) -> dict[str, Any]:
    """Training/test labels for the kernel FF: the user's sGDML dataset, or GFN2-xTB on AA frames."""
    cfg = ctx.config
    ref = cfg["reference"]
    n_tr, n_te = ref["label_frames"], ref["test_frames"]
    rng = np.random.default_rng(cfg["seed"])
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
        n = min(len(aa), n_tr + n_te)
        idx = np.sort(rng.choice(len(aa), n, replace=False))
        lab = label_dataset(aa[idx], progress=ctx.progress)
        perm = rng.permutation(n)
        train, test = lab[np.sort(perm[:n_tr])], lab[np.sort(perm[n_tr:])]
    train.save(ctx.file("labels_train.npz"))
    test.save(ctx.file("labels_test.npz"))
    return {"label_train_frames": len(train), "label_test_frames": len(test)}


def kernel_train(ctx: RunContext) -> dict[str, Any]:
    """Fit the kernel force field on the training labels (σ on a validation split) and test it."""
    from forcefield import KernelForceField

    cfg = ctx.config
    tr, te = load_dataset(ctx.file("labels_train.npz")), load_dataset(ctx.file("labels_test.npz"))
    sigma = cfg["reference"]["sigma"]
    dev = _device(ctx)
    if sigma is None:
        n_val = max(1, len(tr) // 5)
        fit_part, val = tr[: len(tr) - n_val], tr[len(tr) - n_val:]
        best = None
        for sig in (10, 20, 40, 80):
            ff = KernelForceField(sigma=sig, device=dev).fit(fit_part.R, tr.z, F=fit_part.F, E=fit_part.E)
            mae = float(np.abs(ff.predict(val.R)[1] - val.F).mean())
            if best is None or mae < best[1]:
                best = (sig, mae)
        sigma = best[0]
    ff = KernelForceField(sigma=sigma, device=dev).fit(tr.R, tr.z, F=tr.F, E=tr.E)
    ff.save(ctx.file("kernel.npz"))
    E, F = ff.predict(te.R)
    return {"kernel_sigma": float(sigma), "kernel_force_mae": float(np.abs(F - te.F).mean()),
            "kernel_energy_mae": float(np.abs(E - te.E).mean()), "kernel_train_frames": len(tr),
            "kernel_test_frames": len(te)}


def kernel_md(ctx: RunContext) -> dict[str, Any]:
    """AA Langevin MD with the kernel force field on many replicas: the AA reference (its forces are the FF's)."""
    import torch

    from forcefield import KernelForceField
    from forcefield.langevin import simulate

    cfg = ctx.config
    km, s = cfg["kernel_md"], cfg["system"]
    ff = KernelForceField.load(ctx.file("kernel.npz"))
    aa = load_dataset(ctx.file("aa.npz"))
    rng = np.random.default_rng(cfg["seed"] + 7)
    starts = aa.R[np.sort(rng.choice(len(aa), km["replicas"], replace=False))]

    def force_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        E, F = ff.predict(x.detach().cpu().numpy())
        return torch.as_tensor(E, dtype=x.dtype), torch.as_tensor(F, dtype=x.dtype)

    def broken(x: torch.Tensor) -> torch.Tensor:  # any covalent bond stretched by > 0.5 Å: the FF left its data
        d = torch.linalg.norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], dim=-1)
        return (d - ref_len).abs().max(dim=1).values > 0.5

    from forcefield.geometry import covalent_bonds

    bonds = torch.as_tensor(covalent_bonds(aa.R[0], aa.z))
    ref_len = torch.linalg.norm(torch.as_tensor(aa.R[:, bonds[:, 0]] - aa.R[:, bonds[:, 1]]), dim=-1).mean(0)
    traj = simulate(force_fn, torch.as_tensor(starts), torch.as_tensor(aa.masses), n_steps=km["frames"] * km["save_every"],
                    save_every=km["save_every"], dt_fs=km["timestep_fs"], temperature=s["temperature"],
                    friction_per_ps=1.0, seed=cfg["seed"], check_fn=broken, progress=ctx.progress,
                    desc="kernel-FF MD")
    parts = [Dataset(R=traj.replica(b)[0], z=aa.z, E=traj.replica(b)[2], F=traj.replica(b)[1])
             for b in range(len(starts)) if traj.n_valid[b] > 0]
    ref = Dataset.concatenate(parts)
    ref.name, ref.theory = aa.name, "kernel force field MD"
    ref.extra = {"replica_frames": traj.n_valid.astype(np.int64)}
    ref.save(ctx.file("reference.npz"))
    return {"kernel_md_frames": len(ref), "kernel_md_stable_fraction": float(np.mean(traj.n_valid == km["frames"])),
            "kernel_md_ps_per_replica": km["frames"] * km["save_every"] * km["timestep_fs"] / 1000}


def reference_direct(ctx: RunContext) -> dict[str, Any]:
    """The AA reference without a kernel FF: trajectory forces, OpenMM forces, or GFN2-xTB labels."""
    cfg = ctx.config
    src = cfg["reference"]["forces"]
    aa = load_dataset(ctx.file("aa.npz"))
    if src == "trajectory":
        if aa.F is None:
            raise InputError(f"{cfg['system']['trajectory']}: reference.forces = 'trajectory' but it has no forces")
        ref = aa
    elif src == "openmm":
        from forcefield.reference import openmm_energy_forces

        E, F = openmm_energy_forces(ctx.file("topology.pdb"), aa.R, solvent=cfg["system"]["solvent"])
        ref = aa[:]
        ref.E, ref.F = E, F
    else:  # xtb
        from forcefield.reference import label_dataset

        ref = label_dataset(aa, progress=ctx.progress)
    ref.save(ctx.file("reference.npz"))
    return {"reference_frames": len(ref), "reference_forces": src}
