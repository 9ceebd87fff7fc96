"""``cgwb backmap``: train a backmapping model, sample AA structures from CG trajectories, evaluate them."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_device, add_group, add_quiet, pick_device


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("train", help="train a backmapping model (equivariant conditional VAE) on an AA trajectory",
                     description="Train a backmapping model for a CG mapping on an all-atom trajectory (any format "
                                 "MDAnalysis reads, or an sGDML .npz made by `cgwb data md`). Writes one .pt file "
                                 "(weights, mapping, topology); a checkpoint lets an interrupted run resume.")
    p.add_argument("topology", help="AA topology (PDB, ...) or an .npz dataset")
    p.add_argument("traj", nargs="?", default=None, help="AA trajectory (for a topology file)")
    p.add_argument("-m", "--mapping", required=True, help="mapping JSON (`cgwb map ...`)")
    p.add_argument("-o", "--out", default="backmap.pt", help="model file (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=0.01, help="KL weight (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--latent", type=int, default=16, help="latent size per bead")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames (evenly spaced)")
    p.add_argument("--decoder", choices=["vae", "e3nn"], default="vae",
                   help="vae: conditional VAE (posterior reconstructions too); e3nn: e3nn decoder on residue/bead "
                        "tokens (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed when present)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_train)

    p = g.add_parser("sample", help="backmap a CG trajectory into all-atom structures",
                     description="Draw N all-atom samples per frame of a CG trajectory (one atom per bead, in the "
                                 "model's bead order: e.g. the output of `cgwb map apply`). Frames of the output: "
                                 "CG frame f, sample s -> f*N + s. Writes PDB, or a trajectory plus a PDB beside it.")
    p.add_argument("model", help="model file from `cgwb backmap train`")
    p.add_argument("cg", help="CG topology (PDB, ...) or an .npz of bead positions")
    p.add_argument("cg_traj", nargs="?", default=None, help="CG trajectory (for a topology file)")
    p.add_argument("-o", "--out", default="backmapped.dcd", help=".pdb, .dcd, .xtc, ... (default: %(default)s)")
    p.add_argument("-n", "--samples", type=int, default=1, help="samples per CG frame (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior's spread")
    p.add_argument("--relax", action="store_true", help="restrained amber14 minimisation of every sample (OpenMM)")
    p.add_argument("--relax-hold", choices=["heavy", "beads"], default="heavy",
                   help="atoms restrained while relaxing: every heavy atom, or only the atoms of the CG beads")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_sample)

    p = g.add_parser("evaluate", help="compare backmapped structures with reference AA frames",
                     description="RMSD after alignment (all/heavy atoms), bond-graph validity and graph-edit ratio, "
                                 "clash rate, diversity, COV/MAT and optionally amber14 energies. The generated "
                                 "trajectory must hold frames x samples frames, frame-major.")
    p.add_argument("generated", help="generated topology (PDB)")
    p.add_argument("generated_traj", nargs="?", default=None, help="generated trajectory")
    p.add_argument("--ref", required=True, help="reference topology (PDB) or .npz dataset")
    p.add_argument("--ref-traj", default=None, help="reference trajectory")
    p.add_argument("--energies", action="store_true", help="also amber14 energies (OpenMM)")
    p.add_argument("--clash-distance", type=float, default=2.0, help="Å (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=_evaluate)


def _open(top: str, traj: str | None):
    """Universe of a topology (+trajectory), or a Dataset for an .npz file."""
    if top.endswith(".npz"):
        from forcefield import load_dataset

        return load_dataset(top)
    from forcefield import open_universe

    return open_universe(top, *([traj] if traj else []))


def _train(a: argparse.Namespace) -> int:
    from backmap.recipe import BackmapConfig, fit_backmapper
    from cg.mapping import Mapping

    mapping = Mapping.load(a.mapping)
    aa = _open(a.topology, a.traj)
    cfg = BackmapConfig.build(dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, beta=a.beta, hidden=a.hidden,
                                   latent=a.latent, train_frames=a.max_frames, decoder=a.decoder),
                              source="cgwb backmap train")
    t = time.time()
    bm = fit_backmapper(mapping, aa, cfg, device=pick_device(a.device), seed=a.seed, checkpoint=a.checkpoint,
                        progress=not a.quiet)
    bm.save(a.out)
    last = bm.history.val[-1] if bm.history.val else {}
    print(f"trained {mapping.n_beads}-bead backmapper in {time.time() - t:.1f} s; validation posterior RMSD "
          f"{last.get('rmsd_post', float('nan')):.3f} Å; wrote {a.out}")
    return 0


def _sample(a: argparse.Namespace) -> int:
    from backmap import Backmapper
    from backmap.universe import write_aa

    bm = Backmapper.load(a.model, device=pick_device(a.device))
    cg = _open(a.cg, a.cg_traj)
    t = time.time()
    u = bm.sample(cg, n_samples=a.samples, temperature=a.temperature, seed=a.seed, relax=a.relax,
                  progress=not a.quiet, **({"hold": a.relax_hold} if a.relax else {}))
    dt = time.time() - t
    write_aa(u, a.out)
    n = len(u.trajectory)
    print(f"{n} all-atom frames ({a.samples} per CG frame) in {dt:.2f} s ({n / max(dt, 1e-9):.0f} samples/s); "
          f"wrote {a.out}" + ("" if Path(a.out).suffix.lower() == ".pdb" else f" and {Path(a.out).with_suffix('.pdb')}"))
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from backmap import evaluate

    gen = _open(a.generated, a.generated_traj)
    ref = _open(a.ref, a.ref_traj)
    pdb = a.ref if a.ref.lower().endswith(".pdb") else None
    m = evaluate(ref, gen, energies=a.energies, pdb=pdb, clash_distance=a.clash_distance)
    for k, v in m.items():
        print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
    if a.json:
        from forcefield.fileio import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(m, indent=1))
    return 0
