"""CG and backmapping stages of ``cgwb run``: each parses the run folder, calls one recipe, and reports.

Recipes: :func:`cg.fit_mapping.fit_mapping`, :func:`cg.forcematching.fit_cg_model`,
:func:`cg.simulate.simulate_cg`, :func:`backmap.recipe.fit_backmapper` / :func:`~backmap.recipe.evaluate_backmapper`,
and the metrics of :mod:`cg.evaluate`.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from forcefield import Dataset, InputError, load_dataset
from forcefield.fileio import atomic_path
from forcefield.splits import block_split, trajectory_lengths

from .stages import RunContext
from .steps import TRAIN_FRACTION, _device


def _reference(ctx: RunContext, split: bool = True) -> tuple[Dataset, Dataset]:
    """(train, held-out) split of the AA reference: the held-out part is the last 10 % of each replica.

    Both parts keep their per-replica frame counts in ``extra['replica_frames']`` (contiguous blocks).
    """
    ref = load_dataset(ctx.file("reference.npz"))
    ref.extra["pdb"] = np.array(ctx.file("topology.pdb").read_text())
    lengths = trajectory_lengths(ref.extra, len(ref))
    tr, te = block_split(len(ref), 1.0 - TRAIN_FRACTION, lengths)
    ends = np.cumsum(lengths)
    parts = []
    for idx in (tr, te):
        d = ref[idx]
        d.extra = {**d.extra, "replica_frames": np.bincount(np.searchsorted(ends, idx, side="right"),
                                                            minlength=len(lengths)).astype(np.int64)}
        parts.append(d)
    return parts[0], parts[1]


def _topology(ctx: RunContext) -> Any:
    from forcefield import open_universe

    # PDB CONECT records can be partial (OpenMM writes them for non-standard residues only): guess all bonds
    return open_universe(ctx.file("topology.pdb"), to_guess=("types", "masses", "bonds"), force_guess=("bonds",))


# --------------------------------------------------------------------------- 3. mapping
def mapping(ctx: RunContext) -> dict[str, Any]:
    import cg
    from cg.fit_mapping import fit_mapping

    cfg = ctx.config
    train, test = _reference(ctx)
    u = _topology(ctx)
    m = fit_mapping(train, u, cfg.section("mapping"), device=_device(ctx), seed=cfg["seed"], progress=ctx.progress,
                    base_dir=cfg.base_dir)
    m.save(ctx.file("mapping.json"))
    out = {"mapping_n_beads": m.n_beads, "mapping_kind": cfg["mapping"]["kind"],
           "mapping_beads": [[str(u.atoms.names[i]) for i in b] for b in m.beads]}
    try:
        out["mapping_recon_rmsd"] = float(cg.reconstruction_rmsd(m, train.R, test.R)["test"])
    except Exception as e:  # noqa: BLE001 - the metric is informative only; say why it is missing
        out["mapping_recon_rmsd"] = float("nan")
        ctx.log(f"[mapping] no reconstruction RMSD: {e}")
    return out


# --------------------------------------------------------------------------- 4. CG potential
def reference_constraints(cfg: Any) -> str:
    """``hbonds`` when the AA reference forces come from OpenMM MD with X-H constraints, else ``none``."""
    from forcefield.reference.openmm_md import EXPLICIT

    smp = cfg["sampling"]
    constrained = smp["constraints"] == "hbonds" or (smp["constraints"] == "auto"
                                                     and cfg["system"]["solvent"] in EXPLICIT)
    return "hbonds" if cfg["reference"]["forces"] == "openmm" and constrained else "none"


def cg_force_map(cfg: Any) -> str:
    """``auto``: the least-noise map (with X-H pairs kept at one weight where the OpenMM reference
    constrained them), the per-bead sum for user trajectories (their constraints are unknown)."""
    fmap = cfg["cg"]["force_map"]
    if fmap == "auto":
        fmap = "sum" if cfg["reference"]["forces"] == "trajectory" else "optimal"
    return fmap


def cg_train(ctx: RunContext) -> dict[str, Any]:
    from cg import Mapping
    from cg.forcematching import fit_cg_model
    from cg.plots import plot_training

    cfg = ctx.config
    m = Mapping.load(ctx.file("mapping.json"))
    ref = load_dataset(ctx.file("reference.npz"))
    fm = cfg.section("cg").forcematching(cg_force_map(cfg), reference_constraints(cfg))
    model = fit_cg_model(m, ref, fm, temperature=cfg["system"]["temperature"], device=_device(ctx),
                         seed=cfg["seed"], checkpoint=ctx.checkpoint("cg_train"), progress=ctx.progress,
                         log=lambda s: ctx.log(f"[cg_train] {s}"))
    model.save(ctx.file("cg_potential.pt"))
    out = {"cg_force_map": fm.force_map, "cg_frames": model.info["frames"]}
    if "domain_frames_outside" in model.info:
        out.update(cg_reference_outside_domain=model.info["domain_frames_outside"],
                   cg_force_rmse_gated=model.info["domain_force_rmse_gated"])
    if model.history:
        from cg.train import TrainResult

        plot_training(TrainResult(**model.history), ctx.file("cg_training.png"))
        out.update({"cg_force_rmse_val": model.info["best_val_rmse"],
                    "cg_prior_only_rmse_val": model.info["prior_val_rmse"], "cg_epochs": model.info["epochs"],
                    "cg_seconds_per_epoch": model.info["seconds_per_epoch"]})
        if "member_val_rmse" in model.info:  # an ensemble: its members' own validation errors
            out.update(cg_ensemble=model.info["ensemble"], cg_member_force_rmse_val=model.info["member_val_rmse"])
    return out


# --------------------------------------------------------------------------- 5. CG MD
def cg_md(ctx: RunContext) -> dict[str, Any]:
    from cg import Mapping
    from cg.evaluate import bonded_js
    from cg.plots import plot_distributions
    from cg.potential import CGPotential
    from cg.simulate import simulate_cg

    cfg = ctx.config
    c = cfg["cg"]
    m = Mapping.load(ctx.file("mapping.json"))
    ref = load_dataset(ctx.file("reference.npz"))
    ref_cg = m.map_positions(ref.R)
    pot = CGPotential.load(str(ctx.file("cg_potential.pt")), device=_device(ctx))
    frame_fs = _ref_frame_fs(cfg)
    total_fs = c["md_ns"] * 1e6 if c["md_ns"] else len(ref) * frame_fs  # default: the AA reference's time
    n_steps = max(100, int(total_fs / c["timestep_fs"] / c["replicas"]))
    save_every = max(1, int(round((c["save_fs"] or frame_fs) / c["timestep_fs"])))
    sim = cfg.section("cg").simulation(n_steps, save_every, cfg["system"]["temperature"])
    masses = m.represented_masses() if c["bead_masses"] == "represented" else None
    traj = simulate_cg(pot, ref_cg, sim, reference=ref_cg, device=_device(ctx), seed=cfg["seed"],
                       progress=ctx.progress, masses=masses)
    traj.save(ctx.file("cg_md.npz"))
    R = traj.frames()
    out = {"cg_stable_fraction": traj.stable_fraction, "cg_md_frames": len(R),
           "cg_md_ps_total": n_steps * c["timestep_fs"] * c["replicas"] / 1000,
           "cg_md_timestep_fs": c["timestep_fs"], "cg_md_bead_masses": c["bead_masses"],
           "cg_md_bead_steps_per_s": traj.speed.get("bead_steps_per_s", float("nan")),
           "cg_md_ns_per_day": traj.speed.get("ns_per_day", float("nan"))}
    aa_speed = ctx.results.get("aa_ns_per_day")
    if aa_speed:  # the same cores: CG MD summed over replicas against the AA sampling stage as it ran
        out["cg_md_speedup_vs_aa"] = out["cg_md_ns_per_day"] / aa_speed
    if pot.domain is not None and len(R):  # a model used outside its domain says so
        out["cg_md_outside_domain"] = float((pot.domain.gate_frames(R) < 0.5).double().mean())
        if out["cg_md_outside_domain"] > 0.05:
            ctx.log(f"[cg_md] {100 * out['cg_md_outside_domain']:.1f} % of the CG MD frames lie where the reference "
                    "has (almost) no frames: there the model is its priors only")
    if len(m.bonds) and len(R):
        js = bonded_js(ref_cg, R, m.bonds)
        out.update({"cg_bonded_js": js["all_mean"], "cg_bonded_js_max": js["all_max"]})
        kinds = ("bonds", "angles", "dihedrals")
        worst = max(((k, i, v) for k in kinds for i, v in enumerate(js[k])), key=lambda t: t[2])
        out["cg_bonded_js_worst"] = f"{worst[0]} #{worst[1]}"
        half = len(ref_cg) // 2  # noise floor: the reference's first half against its second (contiguous)
        if half >= 2:
            fl = bonded_js(ref_cg[:half], ref_cg[half:], m.bonds)
            out.update({"cg_bonded_js_floor": fl["all_mean"], "cg_bonded_js_max_floor": fl["all_max"]})
        plot_distributions(ref_cg, R, m.bonds, ctx.file("cg_bonded.png"))
    else:
        ctx.log("[cg_md] no CG bonds or no stable frames: bonded JS not defined (NaN)")
        out.update({"cg_bonded_js": float("nan"), "cg_bonded_js_max": float("nan")})
    if len(R) and len(_topology(ctx).residues) >= 4:  # a peptide or protein: Rg, end-to-end, Q, TICA, distance map
        from cg.protein_metrics import protein_report
        from forcefield.splits import trajectory_lengths

        rep = protein_report(ref_cg, R, lengths=trajectory_lengths(ref.extra, len(ref)))
        out.update({f"cg_{k}": v for k, v in rep.items()})
    return out


def _ref_frame_fs(cfg: Any) -> float:
    km = cfg["kernel_md"]
    if cfg["reference"]["forces"] == "kernel":
        return km["save_every"] * km["timestep_fs"]
    return cfg["sampling"]["save_every"] * cfg["sampling"]["timestep_fs"]


# --------------------------------------------------------------------------- 6. backmapping
def backmap_train(ctx: RunContext) -> dict[str, Any]:
    from backmap.recipe import fit_backmapper
    from cg import Mapping

    cfg = ctx.config
    b = cfg.section("backmap")
    m = Mapping.load(ctx.file("mapping.json"))
    train, test = _reference(ctx)
    bm = fit_backmapper(m, train, b, device=_device(ctx), seed=cfg["seed"],
                        checkpoint=ctx.checkpoint("backmap_train"), progress=ctx.progress)
    bm.save(ctx.file("backmap.pt"))
    return {"backmap_train_frames": len(train)}


def backmap_eval(ctx: RunContext) -> dict[str, Any]:
    """Backmapping figures on the held-out reference frames (a stage of its own: evaluation settings such as
    ``frames``, ``samples`` or ``relax`` do not retrain the model)."""
    from backmap import Backmapper
    from backmap.recipe import evaluate_backmapper

    cfg = ctx.config
    b = cfg.section("backmap")
    train, test = _reference(ctx)
    bm = Backmapper.load(ctx.file("backmap.pt"), device=_device(ctx))
    met = evaluate_backmapper(bm, test, b, seed=cfg["seed"], train=train)
    out = {"backmap_heldout_frames": met["frames"], "backmap_samples": met["samples"]}
    for key, name in (("prior_rmsd_all", "backmap_rmsd_all"), ("prior_rmsd_all_plain", "backmap_rmsd_all_plain"),
                      ("prior_rmsd_heavy", "backmap_rmsd_heavy"), ("prior_valid_ratio", "backmap_valid_ratio"),
                      ("prior_clash_rate", "backmap_clash_rate"), ("prior_diversity", "backmap_diversity"),
                      ("recon_rmsd_all", "backmap_recon_rmsd_all"), ("recon_rmsd_heavy", "backmap_recon_rmsd_heavy"),
                      ("recon_valid_ratio", "backmap_recon_valid_ratio"), ("nn_rmsd_all", "backmap_rmsd_all_floor"),
                      ("nn_rmsd_heavy", "backmap_rmsd_heavy_floor"), ("nn_cg_rmsd", "backmap_floor_cg_rmsd"),
                      ("relaxed_rmsd_all", "backmap_relaxed_rmsd_all"), ("relaxed_rmsd_heavy", "backmap_relaxed_rmsd_heavy"),
                      ("relaxed_valid_ratio", "backmap_relaxed_valid_ratio"),
                      ("relaxed_clash_rate", "backmap_relaxed_clash_rate")):
        if key in met:
            out[name] = float(met[key])
    with atomic_path(ctx.file("backmap_eval.json")) as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    return out


def backmap_cg(ctx: RunContext) -> dict[str, Any]:
    """Backmap CG-MD frames and compare the φ/ψ free-energy surface with the AA reference."""
    import backmap
    from cg.evaluate import fes_js, phi_psi
    from cg.plots import plot_fes_panels
    from cg.simulate import CGTrajectory
    from forcefield.universe import backbone_phi_psi_atoms

    cfg = ctx.config
    bm = backmap.Backmapper.load(ctx.file("backmap.pt"))
    cgR = CGTrajectory.load(ctx.file("cg_md.npz")).frames()
    if len(cgR) == 0:
        raise InputError("CG MD kept no frames (every replica stopped at once): nothing to backmap")
    if len(cgR) > cfg["backmap"]["cg_frames"]:
        cgR = cgR[np.linspace(0, len(cgR) - 1, cfg["backmap"]["cg_frames"]).round().astype(int)]
    gen = bm.sample(cgR, n_samples=1, seed=cfg["seed"], temperature=cfg["backmap"]["temperature"])
    R = np.stack([gen.atoms.positions.astype(np.float64) for _ in gen.trajectory])
    ref = load_dataset(ctx.file("reference.npz"))
    ds = Dataset(R=R, z=ref.z, name="backmapped CG MD", theory="backmapped")
    ds.save(ctx.file("backmapped.npz"))
    out: dict[str, Any] = {"backmapped_frames": len(R)}
    quads = backbone_phi_psi_atoms(_topology(ctx))
    if quads is not None:
        pp_ref, pp_gen = phi_psi(ref.R, *quads), phi_psi(R, *quads)
        res = fes_js(pp_ref, pp_gen, bins=36)
        half = len(pp_ref) // 2
        floor = fes_js(pp_ref[:half], pp_ref[half:], bins=36)["js"]
        out.update({"cg_fes_js": res["js"], "cg_fes_js_floor": floor, "cg_fes_grid": res["grid"],
                    "cg_fes_n_ref": res["n_ref"], "cg_fes_n_test": res["n_test"]})
        panels, names = [pp_ref, pp_gen], ["AA reference", "backmapped CG MD"]
        if ctx.file("aa.npz").exists():
            panels.insert(0, phi_psi(load_dataset(ctx.file("aa.npz")).R, *quads))
            names.insert(0, "seed sampling (OpenMM)")
        plot_fes_panels(panels, ctx.file("fes_aa_vs_cg.png"), bins=36, labels=names)
    return out
