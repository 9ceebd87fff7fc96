"""``cgwb data``: peptide builder, OpenMM reference MD, GFN2-xTB labels, dataset info and conversion."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_group, add_quiet


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("md", help="Langevin MD of a PDB with OpenMM amber14; saves R, F, E (.npz)",
                     description="Langevin MD of a PDB system with OpenMM (amber14; vacuum, OBC2/GBn2 implicit or "
                                 "TIP3P explicit solvent); writes an sGDML-format dataset with positions (Å), forces "
                                 "(kcal/mol/Å), energies (kcal/mol). Explicit solvent: solute atoms only, with their "
                                 "total forces (water included), no energies.")
    p.add_argument("pdb", nargs="?", default=None, help="PDB file (default: the shipped alanine dipeptide)")
    p.add_argument("-o", "--out", default="aa_md.npz", help="output .npz (default: %(default)s)")
    p.add_argument("-n", "--frames", type=int, default=1000, help="frames to save (default: %(default)s)")
    p.add_argument("--save-every", type=int, default=100, help="MD steps between frames (default: %(default)s)")
    p.add_argument("--dt", type=float, default=None, help="time step in fs (default: 1, or 2 in explicit solvent)")
    p.add_argument("-T", "--temperature", type=float, default=300.0, help="K (default: %(default)s)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps (default: %(default)s)")
    p.add_argument("--solvent", choices=["vacuum", "obc2", "gbn2", "tip3p"], default="vacuum")
    p.add_argument("--constraints", default=None, help="none | hbonds (default: hbonds in tip3p, else none)")
    p.add_argument("--equilibrate", type=int, default=10000, help="steps before the first frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default=None, choices=["auto", "CUDA", "OpenCL", "CPU", "Reference"],
                   help="OpenMM platform (default: CUDA if present, else CPU; Reference for tiny vacuum systems)")
    p.add_argument("--replicas", type=int, default=1, help="independent runs, concatenated (default: 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="run the replicas in this many local processes (Dask; default: %(default)s, serial)")
    p.add_argument("--hydrogen-mass", type=float, default=None, metavar="AMU",
                   help="hydrogen mass repartitioning (e.g. 3 with --constraints hbonds --dt 4)")
    p.add_argument("--hot-start", type=float, default=None, metavar="K",
                   help="first half of the equilibration at this temperature (diverse replica starts)")
    p.add_argument("--remd", default=None, metavar="T1,T2,...",
                   help="temperature replica exchange over these temperatures (K, first = target); frames are "
                        "saved at the first, an exchange sweep follows every frame")
    add_quiet(p)
    p.set_defaults(func=_md)

    p = g.add_parser("build", help="build a peptide PDB from its sequence (ideal geometry, amber names)",
                     description="Build an all-atom peptide from a one-letter (GYDPETGTWG) or three-letter "
                                 "(ALA-GLY-SER) sequence: ideal bond geometry, chosen backbone phi/psi, amber14 atom "
                                 "names, hydrogens from OpenMM at the given pH, heavy-atom-restrained minimisation.")
    p.add_argument("--sequence", "-s", required=True, help="residue sequence, e.g. GYDPETGTWG (chignolin)")
    p.add_argument("-o", "--out", default=None, help="output PDB (default: SEQUENCE.pdb)")
    p.add_argument("--caps", choices=["ace-nme", "zwitterion"], default="ace-nme",
                   help="ACE/NME caps or charged termini (default: %(default)s)")
    p.add_argument("--conformation", default="extended",
                   help="extended | helix | ppii, or PHI,PSI in degrees as --conformation=-80,70 "
                        "(default: %(default)s)")
    p.add_argument("--ph", type=float, default=7.0, help="pH for protonation states (default: %(default)s)")
    p.add_argument("--no-minimize", action="store_true", help="keep the ideal geometry (no minimisation)")
    p.set_defaults(func=_build)

    p = g.add_parser("label", help="label geometries with GFN2-xTB energies and forces (tblite)",
                     description="Label every geometry of a dataset (or any trajectory MDAnalysis reads) with "
                                 "GFN2-xTB energies and forces.")
    p.add_argument("input", help=".npz dataset, or a topology file (with --traj)")
    p.add_argument("--traj", default=None, help="trajectory file when INPUT is a topology")
    p.add_argument("-o", "--out", required=True, help="output .npz")
    p.add_argument("--method", default="GFN2-xTB", choices=["GFN2-xTB", "GFN1-xTB"])
    p.add_argument("--charge", type=float, default=0.0)
    p.add_argument("--uhf", type=int, default=0, help="unpaired electrons")
    p.add_argument("--every", type=int, default=1, help="take every k-th frame")
    p.add_argument("--max-frames", type=int, default=None)
    add_quiet(p)
    p.set_defaults(func=_label)

    p = g.add_parser("info", help="print a summary of a dataset", description="Summarise an sGDML-format dataset.")
    p.add_argument("dataset")
    p.set_defaults(func=_info)

    p = g.add_parser("convert", help="trajectory (any MDAnalysis format) <-> sGDML .npz",
                     description="Convert a topology+trajectory MDAnalysis reads into an sGDML-format .npz "
                                 "(forces included when present), or an .npz into PDB + DCD/XTC/TRR.")
    p.add_argument("input", help="topology file, or an .npz dataset")
    p.add_argument("traj", nargs="?", default=None, help="trajectory file (for topology input)")
    p.add_argument("-o", "--out", required=True, help=".npz, or a trajectory file (.dcd/.xtc/.trr) for .npz input")
    p.add_argument("--select", default="all", help="MDAnalysis selection (default: all)")
    p.add_argument("--topology", default=None, help="topology (PDB) for .npz -> trajectory")
    p.set_defaults(func=_convert)


def default_pdb() -> Path:
    """The shipped alanine dipeptide structure."""
    from forcefield.data import alanine_dipeptide_pdb

    return alanine_dipeptide_pdb()


def _md(a: argparse.Namespace) -> int:
    from forcefield.reference import run_openmm_md, run_openmm_remd

    pdb = a.pdb or default_pdb()
    common = dict(n_frames=a.frames, save_every=a.save_every, timestep_fs=a.dt, friction_per_ps=a.friction,
                  solvent=a.solvent, equilibration_steps=a.equilibrate, seed=a.seed, platform=a.platform,
                  progress=not a.quiet, constraints=a.constraints, hydrogen_mass=a.hydrogen_mass)
    t0 = time.perf_counter()
    if a.remd:
        try:
            temps = [float(t) for t in a.remd.split(",")]
        except ValueError:
            raise SystemExit(f"--remd {a.remd!r}: expected comma-separated temperatures in K") from None
        ds = run_openmm_remd(pdb, temperatures=temps, **common)
        n_copies = len(temps)
    else:
        par = dict(client="local", n_workers=min(a.workers, a.replicas)) if a.workers > 1 and a.replicas > 1 else {}
        ds = run_openmm_md(pdb, temperature=a.temperature, replicas=a.replicas, hot_start_K=a.hot_start, **common,
                           **par)
        n_copies = a.replicas
    dt = time.perf_counter() - t0
    ds.save(a.out)
    print(ds.summary())
    step_fs = a.dt if a.dt is not None else (2.0 if a.solvent == "tip3p" else 1.0)
    ns = n_copies * a.frames * a.save_every * step_fs / 1e6
    print(f"wrote {a.out}: {len(ds)} frames, {ns:.3f} ns simulated (all copies) in {dt:.1f} s "
          f"({ns / dt * 86400:.1f} ns/day, platform {ds.extra['platform']})")
    if a.remd:
        print("exchange acceptance per neighbour pair: " + " ".join(f"{x:.2f}" for x in ds.extra["acceptance"]))
    return 0


def _build(a: argparse.Namespace) -> int:
    from forcefield.reference import build_peptide, parse_sequence
    from forcefield.reference.peptide import residue_names

    conf: str | tuple[float, float] = a.conformation
    if "," in a.conformation:
        try:
            phi, psi = (float(x) for x in a.conformation.split(","))
        except ValueError:
            raise SystemExit(f"--conformation {a.conformation!r}: expected a name or PHI,PSI in degrees") from None
        conf = (phi, psi)
    out = a.out or f"{a.sequence.replace(' ', '').replace('-', '')}.pdb"
    parse_sequence(a.sequence)  # fail on a bad sequence before OpenMM starts
    text = build_peptide(a.sequence, caps=a.caps, conformation=conf, out=out, minimize=not a.no_minimize, ph=a.ph)
    n = sum(1 for line in text.splitlines() if line.startswith(("ATOM", "HETATM")))
    print(f"wrote {out}: {n} atoms, residues {' '.join(residue_names(text))}")
    return 0


def _load_any(path: str, traj: str | None):
    from forcefield import Dataset, load_dataset, open_universe

    if path.endswith(".npz") and traj is None:
        return load_dataset(path)
    u = open_universe(path, traj) if traj else open_universe(path)
    return Dataset.from_universe(u)


def _label(a: argparse.Namespace) -> int:
    from forcefield.reference import label_dataset

    ds = _load_any(a.input, a.traj)
    ds = ds.subset(slice(None, None, a.every))
    if a.max_frames:
        ds = ds.subset(slice(0, a.max_frames))
    t0 = time.perf_counter()
    out = label_dataset(ds, method=a.method, charge=a.charge, uhf=a.uhf, progress=not a.quiet)
    dt = time.perf_counter() - t0
    out.save(a.out)
    print(out.summary())
    print(f"wrote {a.out}: {len(out)} frames labelled in {dt:.1f} s ({1000 * dt / len(out):.1f} ms/frame)")
    return 0


def _info(a: argparse.Namespace) -> int:
    from forcefield import load_dataset

    ds = load_dataset(a.dataset)
    print(ds.summary())
    if ds.F is not None:
        print(f"  md5 {ds.md5()}")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from forcefield import load_dataset
    from forcefield.universe import write_universe

    if a.input.endswith(".npz"):
        ds = load_dataset(a.input)
        u = ds.to_universe(a.topology)
        write_universe(u, a.out)
        print(f"wrote {a.out} ({len(ds)} frames)")
    else:
        ds = _load_any(a.input, a.traj) if a.select == "all" else None
        if ds is None:
            from forcefield import Dataset, open_universe

            u = open_universe(a.input, a.traj) if a.traj else open_universe(a.input)
            ds = Dataset.from_universe(u, selection=a.select)
        ds.save(a.out)
        print(ds.summary())
        print(f"wrote {a.out}")
    return 0
