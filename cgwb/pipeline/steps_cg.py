"""CG and backmapping stages of ``cgwb run``: mapping, force matching, CG MD, backmapping, evaluation."""
from __future__ import annotations

from typing import Any

import numpy as np

from forcefield import Dataset, InputError, load_dataset

from .stages import RunContext
from .steps import TRAIN_FRACTION, _device

MIN_PRIOR_FRAMES = 20


def _reference(ctx: RunContext) -> tuple[Dataset, Dataset]:
    """(train, held-out) split of the AA reference; the held-out part is the last 10 % of each replica."""
    ref = load_dataset(ctx.file("reference.npz"))
    ref.extra["pdb"] = np.array(ctx.file("topology.pdb").read_text())
    counts = ref.extra.get("replica_frames")
    counts = [len(ref)] if counts is None else [int(c) for c in counts if c > 0]
    tr, te, start = [], [], 0
    for c in counts:
        cut = start + (min(c - 1, max(1, int(round(TRAIN_FRACTION * c)))) if c > 1 else 1)
        tr.append(np.arange(start, cut))
        te.append(np.arange(cut, start + c))
        start += c
    te_idx = np.concatenate(te)
    if len(te_idx) == 0:
        raise InputError(f"the AA reference has {len(ref)} frame(s); at least 2 are needed (training and held-out)")
    return ref[np.concatenate(tr)], ref[te_idx]


def _topology(ctx: RunContext) -> Any:
    from forcefield import open_universe

    # PDB CONECT records can be partial (OpenMM writes them for non-standard residues only): guess all bonds
    return open_universe(ctx.file("topology.pdb"), to_guess=("types", "masses", "bonds"), force_guess=("bonds",))


def backbone_quads(u: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Atom indices of the first backbone φ (C-N-CA-C) and ψ (N-CA-C-N) pair of a peptide, or None."""
    res = u.residues
    for k in range(1, len(res) - 1):
        try:
            c0 = res[k - 1].atoms.select_atoms("name C")[0].index
            n, ca, c = (res[k].atoms.select_atoms(f"name {x}")[0].index for x in ("N", "CA", "C"))
            n1 = res[k + 1].atoms.select_atoms("name N")[0].index
        except IndexError:
            continue
        return (c0, n, ca, c), (n, ca, c, n1)
    return None


# --------------------------------------------------------------------------- 3. mapping
def mapping(ctx: RunContext) -> dict[str, Any]:
    import cg

    cfg = ctx.config
    mp_cfg = cfg["mapping"]
    train, _ = _reference(ctx)
    u = _topology(ctx)
    kind = mp_cfg["kind"]
    if kind == "learned":
        m = cg.learn_mapping(train, n_beads=mp_cfg["n_beads"], epochs=mp_cfg["epochs"], device=_device(ctx),
                             seed=cfg["seed"], progress=ctx.progress, atom_bonds=_atom_bonds(u))
        m.atom_names = [str(n) for n in u.atoms.names]
    elif kind == "preset":
        m = cg.Mapping.from_preset(u.atoms, mp_cfg["preset"])
    elif kind == "selections":
        m = cg.Mapping.from_selections(u.atoms, mp_cfg["selections"])
    else:
        m = cg.Mapping.load(cfg.path(mp_cfg["file"]))
    if m.n_atoms != train.n_atoms:
        raise InputError(f"mapping has {m.n_atoms} atoms, the system {train.n_atoms}")
    m.save(ctx.file("mapping.json"))
    _, test = _reference(ctx)
    out = {"mapping_n_beads": m.n_beads, "mapping_kind": kind,
           "mapping_beads": [[str(u.atoms.names[i]) for i in b] for b in m.beads]}
    try:
        out["mapping_recon_rmsd"] = float(cg.reconstruction_rmsd(m, train.R, test.R)["test"])
    except Exception:  # noqa: BLE001 - the metric is informative only
        pass
    return out


def _atom_bonds(u: Any) -> np.ndarray | None:
    try:
        b = u.bonds.indices
        return np.asarray(b, dtype=int) if len(b) else None
    except Exception:  # noqa: BLE001 - topologies without bonds
        return None


# --------------------------------------------------------------------------- 4. CG potential
def cg_train(ctx: RunContext) -> dict[str, Any]:
    from cg import Mapping
    from cg.potential import build_potential
    from cg.priors import Priors
    from cg.train import train_force_matching

    cfg = ctx.config
    m = Mapping.load(ctx.file("mapping.json"))
    train, _ = _reference(ctx)
    fmap = cfg["cg"]["force_map"]
    if fmap == "auto":  # our own engines run without bond constraints; a user's trajectory may have them
        fmap = "sum" if cfg["reference"]["forces"] == "trajectory" else "optimal"
    if fmap == "optimal" and len(train.F) >= 2:
        m = m.with_optimal_forces(train.F)
        ctx.log("[cg_train] optimal (least-noise) force map")
    Rcg, Fcg = m.map_positions(train.R), m.map_forces(train.F)
    T = cfg["system"]["temperature"]
    if len(Rcg) >= MIN_PRIOR_FRAMES:
        pri = Priors.fit(Rcg, m.bonds, T)
    else:  # Boltzmann inversion needs histograms; a few frames cannot give them
        ctx.log(f"[cg_train] only {len(Rcg)} reference frames: no Boltzmann-inversion priors, network only")
        pri = None
    dev = _device(ctx)
    pot = build_potential(pri, m.names, m.masses, m.bonds, temperature=T, device=dev, network=cfg["cg"]["network"],
                          reference=Rcg)
    hist = train_force_matching(pot, Rcg, Fcg, epochs=cfg["cg"]["epochs"], patience=cfg["cg"]["patience"],
                                device=dev, seed=cfg["seed"],
                                checkpoint=ctx.checkpoint("cg_train"), progress=ctx.progress)
    pot.save(str(ctx.file("cg_potential.pt")))
    from cg.plots import plot_training

    plot_training(hist, ctx.file("cg_training.png"))
    return {"cg_force_rmse_val": float(hist.best_val_rmse), "cg_prior_only_rmse_val": float(hist.prior_val_rmse),
            "cg_epochs": len(hist.val_rmse), "cg_seconds_per_epoch": float(np.mean(hist.epoch_seconds)),
            "cg_force_map": fmap}


# --------------------------------------------------------------------------- 5. CG MD
def cg_md(ctx: RunContext) -> dict[str, Any]:
    from cg import Mapping
    from cg.evaluate import bonded_js, reference_bond_lengths
    from cg.md import run_cg_md
    from cg.plots import plot_distributions
    from cg.potential import CGPotential

    cfg = ctx.config
    c = cfg["cg"]
    m = Mapping.load(ctx.file("mapping.json"))
    train, _ = _reference(ctx)
    ref_all = load_dataset(ctx.file("reference.npz"))
    Rcg = m.map_positions(train.R)
    pot = CGPotential.load(str(ctx.file("cg_potential.pt")), device=_device(ctx))
    total_fs = len(ref_all) * _ref_frame_fs(cfg)  # same total simulated time as the AA reference
    n_steps = max(100, int(total_fs / c["timestep_fs"] / c["replicas"]))
    save_every = max(1, int(round(_ref_frame_fs(cfg) / c["timestep_fs"])))
    # Fu et al.'s 0.5 Å stop, widened where the reference's own CG bonds fluctuate more (soft bonds between
    # large learned beads): at least 1.5x the largest deviation seen in the reference
    r0 = reference_bond_lengths(Rcg, m.bonds)
    ref_dev = np.abs(np.linalg.norm(Rcg[:, m.bonds[:, 1]] - Rcg[:, m.bonds[:, 0]], axis=-1) - r0).max(0)
    thr = np.maximum(0.5, 1.5 * ref_dev)
    rng = np.random.default_rng(cfg["seed"] + 3)
    x0 = Rcg[rng.choice(len(Rcg), c["replicas"], replace=len(Rcg) < c["replicas"])]
    run = run_cg_md(pot, x0, n_steps, dt_fs=c["timestep_fs"], save_every=save_every,
                    temperature=cfg["system"]["temperature"], friction_per_ps=c["friction_per_ps"],
                    reference_bond_lengths=r0, max_bond_deviation=thr, device=_device(ctx),
                    seed=cfg["seed"], progress=ctx.progress)
    ctx.log(run.summary())
    R = run.frames()
    Dataset(R=R, z=np.full(m.n_beads, 6)).save(ctx.file("cg_md.npz"))
    ref_cg = m.map_positions(ref_all.R)
    js = bonded_js(ref_cg, R, m.bonds)
    plot_distributions(ref_cg, R, m.bonds, ctx.file("cg_bonded.png"))
    return {"cg_bonded_js": js["all_mean"], "cg_bonded_js_max": js["all_max"],
            "cg_stable_fraction": float(np.mean([r["stable"] for r in run.report])),
            "cg_md_frames": len(R), "cg_md_ps_total": n_steps * c["timestep_fs"] * c["replicas"] / 1000,
            "cg_md_bead_steps_per_s": run.speed()["bead_steps_per_s"]}


def _ref_frame_fs(cfg: Any) -> float:
    km = cfg["kernel_md"]
    if cfg["reference"]["forces"] == "kernel":
        return km["save_every"] * km["timestep_fs"]
    return cfg["sampling"]["save_every"] * cfg["sampling"]["timestep_fs"]


# --------------------------------------------------------------------------- 6. backmapping
def backmap_train(ctx: RunContext) -> dict[str, Any]:
    import backmap
    from cg import Mapping

    cfg = ctx.config
    b = cfg["backmap"]
    m = Mapping.load(ctx.file("mapping.json"))
    train, test = _reference(ctx)
    bm = backmap.Backmapper(m, device=_device(ctx))
    bm.fit(train, epochs=b["epochs"], checkpoint=ctx.checkpoint("backmap_train"), progress=ctx.progress,
           max_frames=b["train_frames"])
    bm.save(ctx.file("backmap.pt"))
    held = test[np.linspace(0, len(test) - 1, min(len(test), b["frames"])).round().astype(int)]
    gen = bm.sample(m.map_positions(held.R), n_samples=b["samples"], seed=cfg["seed"])
    met = backmap.evaluate(gen, held)
    return {"backmap_rmsd_all": float(met["rmsd_all"]), "backmap_rmsd_heavy": float(met["rmsd_heavy"]),
            "backmap_valid_ratio": float(met["valid_ratio"]), "backmap_clash_rate": float(met["clash_rate"]),
            "backmap_diversity": float(met["diversity"]), "backmap_heldout_frames": len(held)}


def backmap_cg(ctx: RunContext) -> dict[str, Any]:
    """Backmap CG-MD frames and compare the φ/ψ free-energy surface with the AA reference."""
    import backmap
    from cg.evaluate import fes_js, phi_psi
    from cg.plots import plot_fes

    cfg = ctx.config
    bm = backmap.Backmapper.load(ctx.file("backmap.pt"))
    cgR = load_dataset(ctx.file("cg_md.npz")).R
    gen = bm.sample(cgR, n_samples=1, seed=cfg["seed"])
    R = np.stack([gen.atoms.positions.astype(np.float64) for _ in gen.trajectory])
    ref = load_dataset(ctx.file("reference.npz"))
    ds = Dataset(R=R, z=ref.z, name="backmapped CG MD", theory="backmapped")
    ds.save(ctx.file("backmapped.npz"))
    out: dict[str, Any] = {"backmapped_frames": len(R)}
    quads = backbone_quads(_topology(ctx))
    if quads is not None:
        pp_ref, pp_gen = phi_psi(ref.R, *quads), phi_psi(R, *quads)
        res = fes_js(pp_ref, pp_gen, bins=36)
        out.update({"cg_fes_js": res["js"], "cg_fes_grid": res["grid"], "cg_fes_n_ref": res["n_ref"],
                    "cg_fes_n_test": res["n_test"]})
        plot_fes(pp_ref, pp_gen, ctx.file("fes_aa_vs_cg.png"), bins=36, labels=("AA kernel-FF MD", "backmapped CG MD"))
    return out
