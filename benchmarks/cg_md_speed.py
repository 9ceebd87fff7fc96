"""CG MD speed against all-atom OpenMM, measured in one run on this machine.

All-atom references (OpenMM, amber14, LangevinMiddle 300 K, 1/ps, 2 fs, HBonds constraints):
alanine dipeptide in vacuum (no cutoff; CPU and Reference platforms) and in explicit TIP3P water (Modeller,
1 nm padding, PME 1 nm, CPU platform), and chignolin (GYDPETGTWG, 10 residues) in OBC2 implicit solvent
(CPU platform) for the 10-bead Cα case.

CG systems (our engine, :func:`cg.md.run_cg_md`, 2 fs, float32):
* 6 beads: alanine dipeptide, backbone preset, priors fitted (Boltzmann inversion) on a short OpenMM vacuum
  run plus a FeatureNet (the main job's network) with random weights — the speed does not depend on the
  weights, so no force matching is run here.
* 10, 100 beads: synthetic bead chains (random walks with 3.8 Å bonds), fitted priors + random FeatureNet.
* 1,000 beads: synthetic chain, priors only (bonds, angles, dihedrals, repulsion through a 10 Å Verlet
  neighbour list); an all-pairs network over 1,000 beads is not what one would run.
Replicas 1, 16, 256 (one batch). ``--compile`` adds the torch.compile'd step (compile time reported apart).

Reported: simulated ns/day summed over replicas and per replica, by wall clock (the machine is shared; the
load average is printed beside each figure) and by the process's CPU time (``cpu×2``: ns per CPU-second ×
2, what two idle cores would give with the work split over them at perfect parallel efficiency — an upper
bound for OpenMM's threads, exact for independent CG replicas). The compiled step's first call (compiling)
is reported apart and left out of its timing.

    python benchmarks/cg_md_speed.py [--quick] [--threads 1] [--compile] [--json out.json]
    python benchmarks/cg_md_speed.py --kernel-md 300      # kernel-FF AA MD, factored vs generic predictor
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
DT_FS = 2.0


def _load() -> str:
    return "{:.1f}".format(os.getloadavg()[0])


def _ns_day(steps: float, seconds: float, dt_fs: float = DT_FS) -> float:
    return steps * dt_fs * 1e-6 / seconds * 86400.0


# ----------------------------------------------------------------------------- OpenMM all-atom
def openmm_speed(pdb: Path, solvent: str, platform: str, seconds: float, threads: int = 2) -> dict:
    """ns/day of OpenMM AA MD (2 fs, HBonds) for ``solvent`` in vacuum/tip3p/obc2 on ``platform``."""
    import openmm
    import openmm.app as app
    import openmm.unit as u

    pdbf = app.PDBFile(str(pdb))
    if solvent == "tip3p":
        ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
        mod = app.Modeller(pdbf.topology, pdbf.positions)
        mod.addSolvent(ff, model="tip3p", padding=1.0 * u.nanometer)
        top, pos = mod.topology, mod.positions
        system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=1.0 * u.nanometer,
                                 constraints=app.HBonds)
    else:
        extra = ("implicit/obc2.xml",) if solvent == "obc2" else ()
        ff = app.ForceField("amber14-all.xml", *extra)
        top, pos = pdbf.topology, pdbf.positions
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, DT_FS * u.femtosecond)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    ctx = openmm.Context(system, integ, plat, props)
    ctx.setPositions(pos)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 500)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 1)
    integ.step(20)
    n = 20
    while True:  # grow the step count until a run takes ``seconds``
        w0, c0 = time.perf_counter(), time.process_time()
        integ.step(n)
        ctx.getState(getEnergy=True)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if w > seconds or n > 10**7:
            break
        n = int(n * min(10.0, 1.5 * seconds / max(w, 1e-3)))
    return {"system": f"alanine dipeptide AA {solvent}" if "alanine" in pdb.name else f"{pdb.stem} AA {solvent}",
            "engine": f"OpenMM {platform}" + (f" ({threads} threads)" if platform == "CPU" else ""),
            "atoms": system.getNumParticles(), "replicas": 1, "steps": n, "wall_s": w, "cpu_s": c,
            "ns_day": _ns_day(n, w), "ns_day_cpu2": _ns_day(n, c) * 2,
            "load": _load()}


# ----------------------------------------------------------------------------- CG systems
def dipeptide_potential(quick: bool):
    """Backbone-preset CG alanine dipeptide: priors fitted on a short OpenMM vacuum run + random FeatureNet."""
    import MDAnalysis as mda

    from cg import Mapping
    from cg.potential import build_potential
    from cg.priors import Priors
    from forcefield.reference.openmm_md import run_openmm_md

    pdb = HERE / "data" / "alanine-dipeptide.pdb"
    ds = run_openmm_md(pdb, n_frames=200 if quick else 1000, save_every=100, equilibration_steps=2000,
                       platform="Reference", progress=False)
    m = Mapping.from_preset(mda.Universe(str(pdb)).atoms, "backbone")
    R = m.map_positions(ds.R)
    pri = Priors.fit(R, m.bonds, 300.0)
    return build_potential(pri, m.names, m.masses, m.bonds, network="features", reference=R), R


def chain_potential(n: int, network: bool, seed: int = 0):
    """Synthetic bead chain (3.8 ± 0.05 Å bonds, random-walk frames), fitted priors (+ random FeatureNet)."""
    from cg.potential import build_potential
    from cg.priors import Priors

    rng = np.random.default_rng(seed)
    frames = 200
    R = np.zeros((frames, n, 3))
    for k in range(1, n):
        step = rng.normal(size=(frames, 3))
        step[:, 0] += 1.0
        R[:, k] = R[:, k - 1] + rng.normal(3.8, 0.05, (frames, 1)) * step / np.linalg.norm(step, axis=1, keepdims=True)
    bonds = np.array([[k, k + 1] for k in range(n - 1)])
    pri = Priors.fit(R, bonds, 300.0)
    pot = build_potential(pri, ["CA"] * n, np.full(n, 110.0), bonds, network="features" if network else False,
                          reference=R if network else None)
    return pot, R


def cg_speed(pot, R: np.ndarray, name: str, replicas: int, seconds: float, compile: bool = False,
             fast: bool = True, cutoff: float | None = None) -> dict:
    """ns/day of our CG engine for ``replicas`` replicas started from frames of R."""
    from cg.md import run_cg_md

    x0 = R[np.arange(replicas) % len(R)]
    kw = dict(dt_fs=DT_FS, progress=False, fast=fast, compile=compile, repulsion_cutoff=cutoff, seed=1)
    t0 = time.perf_counter()
    pilot = run_cg_md(pot, x0, 10, save_every=10, **kw)  # warm-up (and the compile, when asked)
    first = time.perf_counter() - t0
    if compile:  # a second pilot, compiled already, for the time per step
        pilot = run_cg_md(pot, x0, 50, save_every=50, **kw)
    n = max(20, int(seconds / (pilot.wall_seconds / pilot.n_steps)))
    c0 = time.process_time()
    run = run_cg_md(pot, x0, n, save_every=max(1, n // 10), **kw)
    cpu = time.process_time() - c0
    engine = ("fast" if fast else "autograd") + ("+compile" if compile else "") + (f"+NL{cutoff:g}Å" if cutoff else "")
    return {"system": name, "engine": f"CG {engine}", "atoms": pot.n_beads, "replicas": replicas, "steps": n,
            "wall_s": run.wall_seconds, "cpu_s": cpu, "ns_day": run.ns_per_day,
            "ns_day_cpu2": _ns_day(run.steps_done, cpu) * 2, "stable": f"{sum(r['stable'] for r in run.report)}/{replicas}",
            "first_call_s": first if compile else None, "load": _load()}


def kernel_md_speed(replicas: int, steps: int, seconds_unused: float = 0.0) -> list[dict]:
    """Kernel-FF AA MD at the main job's settings (alanine dipeptide, 200 training frames, 1 fs): steps/s of
    :func:`forcefield.kernel.md.run_md` with the symmetry-factored predictor and with the model's generic one."""
    from forcefield import KernelForceField
    from forcefield.kernel.md import run_md
    from forcefield.reference.openmm_md import run_openmm_md

    ds = run_openmm_md(HERE / "data" / "alanine-dipeptide.pdb", n_frames=400, save_every=100,
                       equilibration_steps=5000, platform="Reference", progress=False)
    ff = KernelForceField(sigma=40, cholesky_max=16000).fit(ds.R[::2], ds.z, F=ds.F[::2], E=ds.E[::2])
    starts = ds.R[1::25][:replicas]
    out = []
    for rep in range(2):
        for fast in (False, True):
            w, c = time.perf_counter(), time.process_time()
            run_md(ff, starts, n_steps=steps, save_every=50, dt_fs=1.0, progress=False, fast=fast)
            w, c = time.perf_counter() - w, time.process_time() - c
            out.append({"engine": "symmetry-factored" if fast else "generic predict_torch", "repeat": rep,
                        "steps_per_s_wall": steps / w, "steps_per_s_cpu": steps / c, "load": _load(),
                        "perms": len(ff.perms)})
            print(f"[kernel-FF MD, {replicas} replicas, {out[-1]['engine']}] {steps / w:.1f} steps/s wall, "
                  f"{steps / c:.1f} per CPU-second (load {out[-1]['load']})", flush=True)
    return out


# ----------------------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    head = ("| system | engine | particles | replicas | ns/day summed (wall) | per replica (wall) | "
            "ns/day summed (cpu×2) | per replica (cpu×2) | load |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        b = r["replicas"]
        out.append(f"| {r['system']} | {r['engine']} | {r['atoms']} | {b} | {r['ns_day']:,.0f} | {r['ns_day'] / b:,.0f} | "
                   f"{r['ns_day_cpu2']:,.0f} | {r['ns_day_cpu2'] / b:,.0f} | {r['load']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the CG engine (default 1)")
    ap.add_argument("--omm-threads", type=int, default=2, help="OpenMM CPU platform threads (default 2)")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--beads", type=int, nargs="+", default=[6, 10, 100, 1000])
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd step (dipeptide)")
    ap.add_argument("--seconds", type=float, default=None, help="target wall seconds per timing")
    ap.add_argument("--json", default=None, help="write all rows as JSON")
    ap.add_argument("--kernel-md", type=int, default=0, metavar="STEPS",
                    help="only time kernel-FF AA MD (16 replicas, STEPS steps; fits a kernel FF first, ~2 min)")
    a = ap.parse_args()
    if a.kernel_md:
        import torch

        torch.set_num_threads(a.threads)
        res = kernel_md_speed(16, a.kernel_md)
        for e in ("generic predict_torch", "symmetry-factored"):
            best = max((r for r in res if r["engine"] == e), key=lambda r: r["steps_per_s_wall"])
            print(f"{e}: best {best['steps_per_s_wall']:.1f} steps/s wall, {best['steps_per_s_cpu']:.1f} per CPU-s")
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return
    import torch

    torch.set_num_threads(a.threads)
    sec = a.seconds or (0.5 if a.quick else 3.0)
    rows: list[dict] = []
    dip = HERE / "data" / "alanine-dipeptide.pdb"
    for solvent, plat in (("vacuum", "CPU"), ("vacuum", "Reference"), ("tip3p", "CPU")):
        rows.append(openmm_speed(dip, solvent, plat, sec, a.omm_threads))
        print(f"[{rows[-1]['system']}, {rows[-1]['engine']}] {rows[-1]['ns_day']:,.0f} ns/day (load {rows[-1]['load']})",
              flush=True)
    chig = HERE / "examples" / "chignolin.pdb"
    if 10 in a.beads and chig.exists():
        rows.append(openmm_speed(chig, "obc2", "CPU", sec, a.omm_threads))
        print(f"[{rows[-1]['system']}] {rows[-1]['ns_day']:,.0f} ns/day", flush=True)
    omm = {(r["system"], r["engine"]): r for r in rows}
    for n in a.beads:
        if n == 6:
            pot, R = dipeptide_potential(a.quick)
            name, cutoff = "alanine dipeptide CG (6 beads, backbone)", None
        else:
            pot, R = chain_potential(n, network=n <= 100)
            name = f"synthetic chain ({n} beads{'' if n <= 100 else ', priors only'})"
            cutoff = 10.0 if n > 100 else None
        for b in a.replicas:
            if n >= 1000 and b > 16 and a.quick:
                continue
            rows.append(cg_speed(pot, R, name, b, sec, cutoff=cutoff))
            r = rows[-1]
            print(f"[{name}, {b} replicas] {r['ns_day']:,.0f} ns/day summed, {r['ns_day'] / b:,.0f} per replica "
                  f"(cpu×2: {r['ns_day_cpu2']:,.0f}; {r['stable']} stable; load {r['load']})", flush=True)
            if n == 6 and b == 16:
                rows.append(cg_speed(pot, R, name, b, sec, fast=False))  # the autograd engine, for comparison
            if n == 6 and a.compile:
                rows.append(cg_speed(pot, R, name, b, sec, compile=True))
                r = rows[-1]
                print(f"  compiled: first call {r['first_call_s']:.0f} s; {r['ns_day']:,.0f} ns/day summed "
                      f"(cpu×2: {r['ns_day_cpu2']:,.0f})", flush=True)
    print()
    print(table(rows))
    # targets (dipeptide, summed and per replica, against OpenMM AA)
    water = next(r for r in rows if r["system"].endswith("tip3p"))
    vac = max((r for r in rows if r["system"].endswith("vacuum")), key=lambda r: r["ns_day_cpu2"])
    print()
    for col, lab in (("ns_day", "wall"), ("ns_day_cpu2", "cpu×2")):
        for r in rows:
            if r["system"].startswith("alanine dipeptide CG") and r["engine"] in ("CG fast", "CG fast+compile"):
                b = r["replicas"]
                print(f"[{lab}] dipeptide {r['engine']}, {b:>3} replicas: summed {r[col] / water[col]:7.1f}x TIP3P (target 100x), "
                      f"per replica {r[col] / b / water[col]:6.1f}x TIP3P (target 10x), summed {r[col] / vac[col]:6.2f}x "
                      f"vacuum {vac['engine']} (target > 1)")
        chig_row = next((r for r in rows if r["system"].startswith("chignolin")), None)
        for r in rows:
            if chig_row and r["system"].startswith("synthetic chain (10 beads"):
                print(f"[{lab}] 10-bead CG, {r['replicas']:>3} replicas: summed {r[col] / chig_row[col]:7.1f}x chignolin "
                      "AA OBC2 (target 100x)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
