"""``cgwb map``: CG mappings: learn one (autoencoder), build a preset, apply one to a trajectory, show one."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_device, add_group, add_quiet, pick_device


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("learn", help="learn a CG mapping with the coarse-graining autoencoder",
                     description="Learn a hard CG mapping (every atom in one bond-connected bead) from a dataset "
                                 "(.npz) or any topology + trajectory MDAnalysis reads, with a Gumbel-softmax "
                                 "autoencoder: reconstruction + rho * mean squared mapped force.")
    p.add_argument("input", help="sGDML-format .npz dataset, or a topology file")
    p.add_argument("traj", nargs="*", help="trajectory file(s) when INPUT is a topology")
    p.add_argument("-n", "--beads", type=int, required=True, help="number of beads")
    p.add_argument("-o", "--out", default="map.json", help="mapping file to write (default: %(default)s)")
    p.add_argument("--select", default="all", help="MDAnalysis selection of the atoms to map (default: all)")
    p.add_argument("--epochs", type=int, default=100, help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=256, help="frames per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--rho", type=float, default=1e-5, help="weight of the mean squared mapped force "
                   "((kcal/mol/Å)^-2 relative to Å^2; default: %(default)s)")
    p.add_argument("--force-term", choices=["expected", "sample"], default="expected",
                   help="exact expectation of the squared mapped force, or one sampled assignment (Autograin)")
    p.add_argument("--restarts", type=int, default=1, help="training runs; the lowest hard loss wins (default: 1)")
    p.add_argument("--decoder", choices=["ridge", "linear", "equivariant"], default="ridge")
    p.add_argument("--weighting", choices=["com", "cog"], default="com")
    p.add_argument("--all-atoms", action="store_true", help="let hydrogens leave their heavy atom's bead")
    p.add_argument("--no-refine", action="store_true", help="skip the greedy refinement of the hard map")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames (strided)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", default=None, help="write the training history to this JSON file")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_learn)

    p = g.add_parser("preset", help="build a preset mapping (heavy, backbone, backbone_cb, backbone_full, residue, ca)",
                     description="Build a preset mapping of a topology and save it as JSON. heavy: one bead per "
                                 "heavy atom with its hydrogens; backbone[_cb|_full]: N, CA, C [CB] [O] beads with "
                                 "the other atoms joining the nearest bonded bead; residue: one bead per residue; "
                                 "ca: C-alpha atoms only.")
    p.add_argument("topology", help="topology file MDAnalysis reads (PDB, PSF, GRO, TPR, ...)")
    p.add_argument("--preset", required=True, choices=["heavy", "backbone", "backbone_cb", "backbone_full",
                                                       "residue", "ca"])
    p.add_argument("--select", default="all", help="MDAnalysis selection (e.g. protein; default: all)")
    p.add_argument("--weighting", choices=["com", "cog"], default="com")
    p.add_argument("-o", "--out", default="map.json")
    p.set_defaults(func=_preset)

    p = g.add_parser("apply", help="map a trajectory to beads and write it (PDB + DCD/XTC/TRR)",
                     description="Map every frame of a topology + trajectory to beads, streaming in chunks; forces "
                                 "(TRR/H5MD input, or --forces-from a kernel model) are mapped as bead force = sum "
                                 "of its atoms' forces and written to TRR output. A PDB with the bead topology is "
                                 "written beside trajectory output.")
    p.add_argument("mapping", help="mapping JSON (cgwb map learn / preset)")
    p.add_argument("topology", help="topology file")
    p.add_argument("traj", nargs="*", help="trajectory file(s)")
    p.add_argument("-o", "--out", required=True, help="output trajectory (.xtc, .dcd, .trr, .pdb, ...)")
    p.add_argument("--pdb", default=None, help="bead PDB to write (default: OUT with .pdb)")
    p.add_argument("--select", default="all", help="atoms the mapping was built from (default: all)")
    p.add_argument("--start", type=int, default=None)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--chunk", type=int, default=1000, help="frames per chunk (default: %(default)s)")
    p.add_argument("--no-forces", action="store_true", help="do not map forces")
    p.add_argument("--forces-from", default=None, help="kernel force field model (.npz) giving forces when the "
                   "trajectory has none")
    p.add_argument("--unwrap", action="store_true", help="make molecules whole across periodic boundaries first")
    add_quiet(p)
    p.set_defaults(func=_apply)

    p = g.add_parser("info", help="print a mapping's beads", description="Print the beads of a mapping JSON file.")
    p.add_argument("mapping")
    p.set_defaults(func=_info)


def _universe(topology: str, traj: list[str]):
    from forcefield import open_universe

    return open_universe(topology, *traj)


def _atoms(u, select: str):
    from forcefield.errors import InputError

    atoms = u.atoms if select == "all" else u.select_atoms(select)
    if atoms.n_atoms == 0:
        raise InputError(f"selection {select!r} matches no atoms")
    return atoms


def _learn(a: argparse.Namespace) -> int:
    from cg.autoencoder import learn_mapping

    if a.input.endswith(".npz") and not a.traj:
        data = a.input
    else:
        data = _atoms(_universe(a.input, a.traj), a.select)
    t0 = time.perf_counter()
    m, hist = learn_mapping(data, a.beads, epochs=a.epochs, batch_size=a.batch, lr=a.lr, rho=a.rho,
                            force_term=a.force_term, restarts=a.restarts,
                            decoder=a.decoder, weighting=a.weighting, united_atoms=not a.all_atoms,
                            refine=not a.no_refine, max_frames=a.max_frames, device=pick_device(a.device),
                            seed=a.seed, progress=not a.quiet, return_history=True)
    m.save(a.out)
    print(m.summary())
    f = hist["final"]
    fn = "n/a" if f["mapped_force_norm"] is None else f"{f['mapped_force_norm']:.2f} kcal/mol/Å"
    val = "n/a" if f["recon_rmsd_val"] is None else f"{f['recon_rmsd_val']:.4f} Å"
    print(f"reconstruction RMSD train {f['recon_rmsd_train']:.4f} Å, held-out {val}; mean mapped force {fn}; "
          f"{1000 * f['seconds_per_epoch']:.1f} ms/epoch; {time.perf_counter() - t0:.1f} s")
    if a.history:
        from forcefield.fileio import atomic_path

        with atomic_path(a.history) as tmp:
            tmp.write_text(json.dumps(hist, indent=1))
    print(f"wrote {a.out}")
    return 0


def _preset(a: argparse.Namespace) -> int:
    from cg.mapping import Mapping

    u = _universe(a.topology, [])
    m = Mapping.from_preset(_atoms(u, a.select), a.preset, weighting=a.weighting)
    m.save(a.out)
    print(m.summary())
    print(f"wrote {a.out}")
    return 0


def _force_provider(path: str):
    import forcefield
    from forcefield.errors import InputError

    cls = getattr(forcefield, "KernelForceField", None)
    if cls is None:
        raise InputError("--forces-from needs forcefield.KernelForceField, which this installation lacks")
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    return cls.load(path)


def _apply(a: argparse.Namespace) -> int:
    from cg.mapping import Mapping
    from cg.universe import write_mapped

    m = Mapping.load(a.mapping)
    u = _universe(a.topology, a.traj)
    forces = None if a.no_forces else (_force_provider(a.forces_from) if a.forces_from else "auto")
    t0 = time.perf_counter()
    out = write_mapped(_atoms(u, a.select), m, a.out, pdb=a.pdb, start=a.start, stop=a.stop, step=a.step,
                       chunk=a.chunk, forces=forces, unwrap=a.unwrap, progress=not a.quiet)
    n = len(range(len(u.trajectory))[slice(a.start, a.stop, a.step)])
    print(f"wrote {out}: {n} frames x {m.n_beads} beads in {time.perf_counter() - t0:.1f} s")
    return 0


def _info(a: argparse.Namespace) -> int:
    from cg.mapping import Mapping

    print(Mapping.load(a.mapping).summary())
    return 0
