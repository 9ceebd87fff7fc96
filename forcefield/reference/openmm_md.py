"""Reference all-atom MD with OpenMM: amber14 in vacuum, implicit solvent (OBC2, GBn2) or explicit TIP3P water.

OpenMM works in nm, kJ/mol, ps; results are converted here to Å, kcal/mol, kcal/mol/Å, fs.

Explicit solvent: the solute is put in a TIP3P box (``padding_nm`` around it, counter-ions to neutralise),
with PME electrostatics, HBonds constraints and a 2 fs step by default. The datasets keep the **solute atoms
only**, with their **total forces** (bonded + solute-solute + solute-solvent): the force a solvent-free CG
model must match is the mean of exactly this force over the solvent, so force matching on these frames
gives the potential of mean force of the solute. Energies of a solvated box are not a function of the
solute's coordinates, so ``E`` is None there (the box energies are kept in ``extra["box_energy"]``).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset
from ..errors import InputError
from ..units import ANGSTROM_PER_NM, KCAL_PER_KJ

FORCE_KJ_NM_TO_KCAL_A = KCAL_PER_KJ / ANGSTROM_PER_NM
#: vacuum systems up to this many atoms run on the Reference platform by default (faster than CPU there:
#: ~30k against ~6k steps/s for alanine dipeptide on this machine); implicit solvent never (10x slower)
SMALL_SYSTEM = 64
#: implicit solvent (native OBC2) up to this many atoms runs on Reference when no GPU platform exists: one
#: Reference thread beat two CPU threads on chignolin (138 atoms: 1,179 against 885 steps/s), the CPU
#: platform won at 285 atoms (600 against 286 steps/s; this 2-core machine, HMR 4 fs)
SMALL_GB_SYSTEM = 160
#: force classes of an amber14 system in vacuum (plus restraints), which the Reference platform runs fast
PLAIN_FORCES = frozenset({"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce",
                          "CMMotionRemover", "CustomExternalForce"})
SOLVENTS = {"vacuum": (), "obc2": ("implicit/obc2.xml",), "gbn2": ("implicit/gbn2.xml",),
            "tip3p": ("amber14/tip3p.xml",)}
EXPLICIT = ("tip3p",)
CUTOFF_NM = 1.0  # explicit solvent: real-space cut-off of PME and Lennard-Jones
PLATFORMS = ("auto", "CUDA", "OpenCL", "CPU", "Reference")


@dataclass
class MDSystem:
    """An OpenMM system with its topology, start positions (nm) and the solute atom indices."""

    system: Any
    topology: Any
    positions: Any
    solute: np.ndarray
    solvent: str
    source: str

    @property
    def explicit(self) -> bool:
        return self.solvent in EXPLICIT


def _load_pdb(pdb: str | os.PathLike) -> Any:
    import openmm.app as app

    p = Path(pdb)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    try:
        return app.PDBFile(str(p))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: OpenMM could not read this PDB ({e})") from e


def native_obc2(system: Any) -> Any:
    """Replace amber14's OBC2 ``CustomGBForce`` (implicit/obc2.xml) by OpenMM's native ``GBSAOBCForce``.

    Same model (OBC II: α, β, γ = 1, 0.8, 4.85; offset 0.009 nm; ACE surface term 2.25936 kJ/mol/nm²; ε 1 / 78.5)
    and the same per-atom radii and scale factors, so energies and forces agree to round-off; about 5x faster
    on the CPU platform. Returns the system (changed in place).
    """
    import openmm

    idx = [k for k, f in enumerate(system.getForces()) if isinstance(f, openmm.CustomGBForce)]
    if len(idx) != 1:
        return system
    g = system.getForce(idx[0])
    names = [g.getPerParticleParameterName(i) for i in range(g.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"] or "4.85*psi^3" not in g.getComputedValueParameters(1)[1]:
        return system  # not the OBC2 form: keep it
    nat = openmm.GBSAOBCForce()
    nat.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    nat.setSoluteDielectric(1.0)
    nat.setSolventDielectric(78.5)
    for i in range(g.getNumParticles()):
        q, offset_radius, scaled = g.getParticleParameters(i)
        nat.addParticle(q, offset_radius + 0.009, scaled / offset_radius)
    nat.setForceGroup(g.getForceGroup())
    system.removeForce(idx[0])
    system.addForce(nat)
    return system


def _constraints(constraints: str | None, explicit: bool) -> Any:
    import openmm.app as app

    key = "auto" if constraints is None and explicit else (constraints or "none")
    key = str(key).lower()
    if key == "auto":
        key = "hbonds" if explicit else "none"
    table = {"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds, "hangles": app.HAngles}
    if key not in table:
        raise InputError(f"unknown constraints {constraints!r}; expected auto, none, hbonds, allbonds or hangles")
    return table[key]


def build_system(pdb: str | os.PathLike, solvent: str = "vacuum", forcefield: str = "amber14-all.xml",
                 constraints: str | None = None, padding_nm: float = 1.0, ionic_strength_molar: float = 0.0,
                 fast_gb: bool = True, box_shape: str = "dodecahedron",
                 hydrogen_mass: float | None = None) -> tuple[Any, MDSystem]:
    """OpenMM (System, :class:`MDSystem`) for a PDB with amber14 in vacuum, implicit or explicit solvent.

    Parameters
    ----------
    solvent : ``"vacuum"``, ``"obc2"``, ``"gbn2"`` (generalised Born) or ``"tip3p"`` (water box, PME, 1 nm cut-off).
    constraints : ``None``/``"none"``, ``"hbonds"``, ... ; ``"auto"``: HBonds in explicit solvent, none
        otherwise (explicit solvent defaults to ``"auto"`` when None is given).
    padding_nm, ionic_strength_molar : water between periodic images of the solute (OpenMM's ``padding``;
        the box is at least 2 cut-offs + 0.2 nm wide), salt in mol/L (ions always neutralise).
    box_shape : ``"dodecahedron"`` (rhombic, ~70 % of the cube's water for the same image distance),
        ``"octahedron"`` or ``"cube"``; solutes too small for it get a cube 2 cut-offs + 0.2 nm wide.
    fast_gb : OBC2 through the native ``GBSAOBCForce`` (:func:`native_obc2`).
    hydrogen_mass : amu; hydrogen mass repartitioning (mass moved from each bonded heavy atom to its hydrogens,
        total mass unchanged; rigid water untouched). With ``"hbonds"`` constraints and 3-4 amu a 4 fs step
        is stable. Masses do not enter the Boltzmann distribution of configurations, so the sampled ensemble
        (and every structural figure) is unchanged; only the dynamics are slowed.
    """
    import openmm
    import openmm.app as app
    import openmm.unit as u

    if solvent not in SOLVENTS:
        raise InputError(f"unknown solvent {solvent!r}; expected one of {sorted(SOLVENTS)}")
    pdbf = _load_pdb(pdb)
    explicit = solvent in EXPLICIT
    ff = app.ForceField(forcefield, *SOLVENTS[solvent])
    cons = _constraints(constraints, explicit)
    hm = {} if hydrogen_mass is None else {"hydrogenMass": float(hydrogen_mass) * u.amu}
    if hydrogen_mass is not None and not 1.0 <= float(hydrogen_mass) <= 5.0:
        raise InputError(f"hydrogen_mass must be between 1 and 5 amu, got {hydrogen_mass}")
    n_solute = pdbf.topology.getNumAtoms()
    try:
        if explicit:
            mod = app.Modeller(pdbf.topology, pdbf.positions)
            if box_shape not in ("cube", "dodecahedron", "octahedron"):
                raise InputError(f"unknown box_shape {box_shape!r}; expected cube, dodecahedron or octahedron")
            mod.addSolvent(ff, model=solvent, padding=padding_nm * u.nanometer, boxShape=box_shape,
                           ionicStrength=ionic_strength_molar * u.molar, neutralize=True)
            side = min(v[k].value_in_unit(u.nanometer) for k, v in enumerate(mod.topology.getPeriodicBoxVectors()))
            if side < 2.0 * CUTOFF_NM + 0.1:  # small solutes: a cube just wide enough for the cut-off
                mod = app.Modeller(pdbf.topology, pdbf.positions)
                L = 2.0 * CUTOFF_NM + 0.2
                mod.addSolvent(ff, model=solvent, boxSize=openmm.Vec3(L, L, L) * u.nanometer,
                               ionicStrength=ionic_strength_molar * u.molar, neutralize=True)
            top, pos = mod.topology, mod.positions
            system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF_NM * u.nanometer,
                                     constraints=cons, rigidWater=True, **hm)
        else:
            top, pos = pdbf.topology, pdbf.positions
            system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=cons, **hm)
    except ValueError as e:
        raise InputError(f"{pdb}: {forcefield} cannot parametrise this structure ({e})") from e
    if solvent == "obc2" and fast_gb:
        native_obc2(system)
    return system, MDSystem(system, top, pos, np.arange(n_solute), solvent, str(pdb))


def _platform(name: str | None, n_atoms: int = 0, system: Any = None) -> Any:
    """OpenMM platform by name; ``None``/``"auto"``: Reference for vacuum systems of at most
    :data:`SMALL_SYSTEM` atoms (it beats the others there), else CUDA, else OpenCL, else Reference for native
    OBC2 implicit solvent up to :data:`SMALL_GB_SYSTEM` atoms, else CPU. Never Reference for custom GB forces
    (GBn2; ~10x slower than on CPU) or explicit solvent."""
    import openmm

    if name is not None and str(name).lower() != "auto":
        try:
            return openmm.Platform.getPlatformByName(str(name))
        except Exception:  # noqa: BLE001 - OpenMMException
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise InputError(f"OpenMM platform {name!r} is not available here; available: {names}") from None
    kinds = set() if system is None else {f.__class__.__name__ for f in system.getForces()}
    if 0 < n_atoms <= SMALL_SYSTEM and kinds <= PLAIN_FORCES:
        return openmm.Platform.getPlatformByName("Reference")
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    small_gb = system is not None and 0 < n_atoms <= SMALL_GB_SYSTEM and kinds <= PLAIN_FORCES | {"GBSAOBCForce"}
    if small_gb and "CUDA" not in names and "OpenCL" not in names:
        return openmm.Platform.getPlatformByName("Reference")
    for pick in ("CUDA", "OpenCL", "CPU", "Reference"):
        if pick in names:
            return openmm.Platform.getPlatformByName(pick)
    raise RuntimeError("no OpenMM platform available")


def _elements(topology: Any, source: str) -> np.ndarray:
    z = []
    for a in topology.atoms():
        if a.element is None:
            raise InputError(f"{source}: atom {a.index} ({a.name}) has no element")
        z.append(a.element.atomic_number)
    return np.array(z, dtype=np.int64)


def _pdb_text(topology: Any, positions_nm: Any) -> str:
    import openmm.app as app

    buf = io.StringIO()
    app.PDBFile.writeFile(topology, positions_nm, buf)
    return buf.getvalue()


def openmm_energy_forces(pdb: str | os.PathLike, R: np.ndarray, solvent: str = "vacuum",
                         forcefield: str = "amber14-all.xml", platform: str | None = None,
                         fast_gb: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Energies (kcal/mol) and forces (kcal/mol/Å) of geometries R (M, N, 3) in Å under amber14 in vacuum or
    implicit solvent (explicit solvent needs the water too: use :func:`run_openmm_md`, which saves forces)."""
    import openmm
    import openmm.unit as u

    if solvent in EXPLICIT:
        raise InputError(f"openmm_energy_forces: solvent {solvent!r} needs water coordinates; the forces of "
                         "explicit-solvent frames are saved by run_openmm_md")
    system, _ = build_system(pdb, solvent, forcefield, fast_gb=fast_gb)
    R = np.asarray(R, dtype=float).reshape(-1, system.getNumParticles(), 3)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), _platform(platform, system.getNumParticles(), system))
    E = np.empty(len(R))
    F = np.empty_like(R)
    for k, r in enumerate(R):
        ctx.setPositions(r / ANGSTROM_PER_NM)
        st = ctx.getState(getEnergy=True, getForces=True)
        E[k] = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KCAL_PER_KJ
        F[k] = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) * FORCE_KJ_NM_TO_KCAL_A
    return E, F


def make_context(mds: MDSystem, temperature: float, friction_per_ps: float, timestep_fs: float, seed: int,
                 platform: str | None = None, pressure_bar: float | None = None,
                 threads: int | None = None) -> tuple[Any, Any]:
    """(Context, LangevinMiddleIntegrator) for an :class:`MDSystem`; a Monte Carlo barostat at ``pressure_bar``
    when the system is periodic; ``threads`` caps the CPU platform's threads (None: OpenMM's default)."""
    import openmm
    import openmm.unit as u

    system = mds.system
    if pressure_bar is not None and mds.explicit:
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
        baro = openmm.MonteCarloBarostat(pressure_bar * u.bar, temperature * u.kelvin, 25)
        baro.setRandomNumberSeed(int(seed) + 1)
        system.addForce(baro)
    integ = openmm.LangevinMiddleIntegrator(temperature * u.kelvin, friction_per_ps / u.picosecond,
                                           timestep_fs * u.femtosecond)
    integ.setRandomNumberSeed(int(seed) + 1)  # OpenMM treats seed 0 as "pick one at random"
    plat = _platform(platform, system.getNumParticles(), system)
    props = {"Threads": str(int(threads))} if threads and plat.getName() == "CPU" else {}
    ctx = openmm.Context(system, integ, plat, props)
    ctx.setPositions(mds.positions)
    return ctx, integ


def minimise(ctx: Any, minimize: bool | int, explicit: bool) -> None:
    """Local energy minimisation: ``True`` (2000 iterations to 1 kJ/mol/nm; explicit solvent 1000 to 10),
    an iteration count, or ``False`` (none)."""
    import openmm

    if minimize is False or minimize == 0:
        return
    tol, its = (10.0, 1000) if explicit else (1.0, 2000)
    if minimize is not True:
        its = int(minimize)
    openmm.LocalEnergyMinimizer.minimize(ctx, tol, its)


def frame(ctx: Any, solute: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Solute positions (Å), their total forces (kcal/mol/Å) and the potential energy (kcal/mol) of a context."""
    import openmm.unit as u

    st = ctx.getState(getPositions=True, getForces=True, getEnergy=True)
    R = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)[solute] * ANGSTROM_PER_NM
    F = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)[solute] * FORCE_KJ_NM_TO_KCAL_A
    return R, F, st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KCAL_PER_KJ


def run_openmm_md(pdb: str | os.PathLike, n_frames: int = 1000, save_every: int = 100,
                  timestep_fs: float | None = None, temperature: float = 300.0, friction_per_ps: float = 1.0,
                  solvent: str = "vacuum", forcefield: str = "amber14-all.xml", equilibration_steps: int = 10000,
                  minimize: bool | int = True, seed: int = 0, platform: str | None = None, progress: bool = True,
                  constraints: str | None = None, replicas: int = 1, padding_nm: float = 1.0,
                  pressure_bar: float | None = 1.0, fast_gb: bool = True, hot_start_K: float | None = None,
                  box_shape: str = "dodecahedron", hydrogen_mass: float | None = None, client: Any = None,
                  n_workers: int | None = None) -> Dataset:
    """Langevin MD of a PDB system with OpenMM; returns positions, forces and energies as a :class:`Dataset`.

    Parameters
    ----------
    pdb : PDB file with names amber14 accepts (hydrogens included; see ``cgwb data build``).
    n_frames, save_every : frames to save per replica, and MD steps between saved frames.
    timestep_fs, temperature, friction_per_ps : integrator settings (fs, K, 1/ps). Default step: 1 fs without
        constraints (vacuum, implicit solvent: the saved forces are then exactly minus the gradient of the
        saved energies), 2 fs in explicit solvent (HBonds constraints).
    solvent : ``"vacuum"``, ``"obc2"`` / ``"gbn2"`` (implicit) or ``"tip3p"`` (explicit water, PME, NPT at
        ``pressure_bar`` unless None). Explicit solvent saves the solute atoms only, with their total
        forces (solvent contributions included), which is what a solvent-free CG model is fitted to; ``E`` is
        then None and ``extra["box_energy"]`` holds the potential energy of the whole box.
    constraints : ``None`` (``"auto"``: HBonds in explicit solvent, none otherwise), ``"none"``, ``"hbonds"``.
        With constraints the saved forces are still the force-field forces (no constraint forces); a force map
        must then give a constrained hydrogen the weight of its heavy atom, so constraint forces cancel (every
        preset of :mod:`cg.presets` does: the ``"ca"`` bead force sums the Cα and its hydrogens).
    hydrogen_mass : amu, hydrogen mass repartitioning (see :func:`build_system`; with ``"hbonds"``, 4 fs steps).
    equilibration_steps : steps run (after minimisation) before the first saved frame, per replica.
    minimize : minimise first (True: up to 2000 iterations to 1 kJ/mol/nm, in explicit solvent 1000 to 10), or
        the number of iterations.
    hot_start_K : run the first half of the equilibration at this temperature (e.g. 600 K), then cool to
        ``temperature``: each replica starts from a different, possibly barrier-crossed state (the frames
        are all at ``temperature``). For a canonical sample across barriers use
        :func:`forcefield.reference.run_openmm_remd`.
    replicas : independent runs (seeds ``seed``, ``seed + 1``, ...) from the same start, concatenated in
        order; ``extra["replica"]`` gives each frame's run (contiguous blocks: split by replica or block).
    client, n_workers : run the replicas on Dask workers (:mod:`forcefield.parallel`: ``"local"`` = a local
        cluster of ``n_workers`` processes); the frames equal the serial run's on deterministic platforms.
        On the CPU platform each worker then uses one thread.
    platform : ``None``/``"auto"``, ``"CUDA"``, ``"OpenCL"``, ``"CPU"`` or ``"Reference"`` (see :func:`_platform`).
    fast_gb : OBC2 through OpenMM's native GBSAOBCForce (same energies, ~5x faster; :func:`native_obc2`).
    box_shape : water box of explicit solvent: ``"dodecahedron"`` (default), ``"octahedron"`` or ``"cube"``.

    Returns
    -------
    Dataset with R (Å), F (kcal/mol/Å), E (kcal/mol, None in explicit solvent); ``extra`` holds ``pdb`` (the
    solute topology as PDB text), ``atom_names``, ``times_fs``, ``replica``, ``platform``,
    ``equilibration_steps`` and ``timestep_fs``.
    """
    from ..parallel import map_blocks

    if n_frames < 1 or save_every < 1 or replicas < 1:
        raise InputError(f"n_frames, save_every and replicas must be positive, got {n_frames}, {save_every}, "
                         f"{replicas}")
    if solvent not in SOLVENTS:
        raise InputError(f"unknown solvent {solvent!r}; expected one of {sorted(SOLVENTS)}")
    solute_top = _load_pdb(pdb)
    z = _elements(solute_top.topology, str(pdb))
    explicit = solvent in EXPLICIT
    dt_fs = float(timestep_fs) if timestep_fs is not None else (2.0 if explicit else 1.0)
    job = dict(pdb=str(pdb), n_frames=int(n_frames), save_every=int(save_every), dt_fs=dt_fs,
               temperature=float(temperature), friction_per_ps=float(friction_per_ps), solvent=solvent,
               forcefield=forcefield, equilibration_steps=int(equilibration_steps), minimize=minimize,
               seed=int(seed), platform=platform, constraints=constraints, padding_nm=padding_nm,
               pressure_bar=pressure_bar, fast_gb=fast_gb, hot_start_K=hot_start_K, box_shape=box_shape,
               hydrogen_mass=hydrogen_mass, progress=progress and client is None, replicas=int(replicas),
               threads=1 if client is not None else None)
    if client is not None:  # bad input fails here, before a cluster starts (serially, replica 0 builds first)
        build_system(pdb, solvent, forcefield, constraints, padding_nm=padding_nm, fast_gb=fast_gb,
                     box_shape=box_shape, hydrogen_mass=hydrogen_mass)
    runs = map_blocks(_md_replica, range(int(replicas)), client=client, n_workers=n_workers,
                      progress=progress and client is not None, desc=f"OpenMM MD replicas ({Path(pdb).name})",
                      common=job)
    R = np.concatenate([r[0] for r in runs])
    F = np.concatenate([r[1] for r in runs])
    E = np.concatenate([r[2] for r in runs])
    plat = runs[0][3]
    names = np.array([a.name for a in solute_top.topology.atoms()])
    times = np.tile(np.arange(1, n_frames + 1) * save_every * dt_fs, replicas).astype(np.float64)
    extra = {"pdb": np.array(_pdb_text(solute_top.topology, solute_top.positions)), "atom_names": names,
             "times_fs": times, "replica": np.repeat(np.arange(replicas), n_frames), "platform": np.array(plat),
             "equilibration_steps": np.array(int(equilibration_steps)), "timestep_fs": np.array(dt_fs)}
    if hydrogen_mass is not None:
        extra["hydrogen_mass"] = np.array(float(hydrogen_mass))
    if explicit:
        extra["box_energy"] = E
    return Dataset(
        R=R, z=z, E=None if explicit else E, F=F, name=Path(pdb).stem,
        theory=f"OpenMM {forcefield} {solvent} {temperature:g} K", extra=extra, source=str(pdb),
    )


def _md_replica(rep: int, job: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One replica of :func:`run_openmm_md` (also the task run on Dask workers): (R, F, E, platform name)."""
    import openmm.unit as u
    from tqdm.auto import tqdm

    _, mds = build_system(job["pdb"], job["solvent"], job["forcefield"], job["constraints"],
                          padding_nm=job["padding_nm"], fast_gb=job["fast_gb"], box_shape=job["box_shape"],
                          hydrogen_mass=job["hydrogen_mass"])
    s, T, n_frames = job["seed"] + int(rep), job["temperature"], job["n_frames"]
    ctx, integ = make_context(mds, T, job["friction_per_ps"], job["dt_fs"], s, job["platform"],
                              job["pressure_bar"], job["threads"])
    plat = ctx.getPlatform().getName()
    minimise(ctx, job["minimize"], mds.explicit)
    eq, hot = int(job["equilibration_steps"]), job["hot_start_K"]
    if hot and eq:
        integ.setTemperature(hot * u.kelvin)
        ctx.setVelocitiesToTemperature(hot * u.kelvin, s + 1)
        integ.step(eq // 2)
        integ.setTemperature(T * u.kelvin)
        ctx.setVelocitiesToTemperature(T * u.kelvin, s + 2)
        integ.step(eq - eq // 2)
    else:
        ctx.setVelocitiesToTemperature(T * u.kelvin, s + 1)
        if eq:
            integ.step(eq)
    n = len(mds.solute)
    R, F, E = np.empty((n_frames, n, 3)), np.empty((n_frames, n, 3)), np.empty(n_frames)
    nrep = job["replicas"]
    desc = f"OpenMM MD ({Path(job['pdb']).name}, {job['solvent']}, {plat})" + (
        f" {rep + 1}/{nrep}" if nrep > 1 else "")
    for k in tqdm(range(n_frames), desc=desc, disable=not job["progress"], mininterval=1.0):
        integ.step(job["save_every"])
        R[k], F[k], E[k] = frame(ctx, mds.solute)
    return R, F, E, plat
