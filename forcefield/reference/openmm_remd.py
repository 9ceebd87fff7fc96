"""Temperature replica exchange (parallel tempering) with OpenMM, for AA reference data that crosses barriers.

One Langevin replica per temperature runs ``save_every`` steps between exchange attempts. Neighbouring
temperatures then try to swap configurations (alternating even and odd pairs) with the Metropolis rule

    p = min(1, exp[(β_i - β_j)(U_i - U_j)])       (+ (β_i - β_j) P (V_i - V_j) at constant pressure),

which keeps every temperature's canonical distribution (Sugita & Okamoto, Chem. Phys. Lett. 314, 141, 1999);
swapped velocities are rescaled by sqrt(T_new / T_old). Frames are saved at the target (first) temperature
only, so the data set is a canonical sample at that temperature that visits states (e.g. φ > 0 of alanine
dipeptide) a plain run at that temperature rarely reaches. Units: K, kcal/mol, Å, bar.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dataset import Dataset
from ..errors import InputError
from ..remd import exchange_probability, exchange_sweep, geometric_temperatures  # noqa: F401 (re-exported)
from ..units import kT as kT_of

#: bar·nm³ -> kcal/mol (1 bar = 1e5 Pa, 1 nm³ = 1e-27 m³, N_A, 4184 J/kcal)
BAR_NM3_TO_KCAL = 1e5 * 1e-27 * 6.02214076e23 / 4184.0


def run_openmm_remd(pdb: str | os.PathLike, temperatures: Sequence[float] = (300.0, 340.0, 385.0, 435.0),
                    n_frames: int = 1000, save_every: int = 500, timestep_fs: float | None = None,
                    friction_per_ps: float = 1.0, solvent: str = "vacuum", forcefield: str = "amber14-all.xml",
                    equilibration_steps: int = 5000, minimize: bool | int = True, seed: int = 0,
                    platform: str | None = None, progress: bool = True, constraints: str | None = None,
                    padding_nm: float = 1.0, pressure_bar: float | None = 1.0, fast_gb: bool = True,
                    box_shape: str = "dodecahedron", hydrogen_mass: float | None = None) -> Dataset:
    """Temperature replica exchange; returns the frames of the first (target) temperature as a :class:`Dataset`.

    Parameters
    ----------
    temperatures : K, target first and increasing (e.g. :func:`geometric_temperatures`).
    n_frames, save_every : frames saved at the target temperature, and MD steps between them; an exchange
        sweep (alternating even/odd neighbour pairs) follows every saved frame.
    Other parameters as in :func:`forcefield.reference.run_openmm_md` (same solvents, constraints, platforms;
    explicit solvent keeps solute atoms with their total forces and adds P·V to the exchange rule).

    Returns
    -------
    Dataset as ``run_openmm_md`` (``theory`` names the ladder); ``extra`` adds ``temperatures``,
    ``acceptance`` (per neighbour pair: accepted / attempted) and ``origin`` (for every frame, the
    temperature slot its configuration was equilibrated from; frames that came down the ladder show it).
    """
    import openmm.unit as u
    from tqdm.auto import tqdm

    from .openmm_md import _elements, _load_pdb, _pdb_text, build_system, frame, make_context, minimise

    T = np.asarray(temperatures, dtype=float).reshape(-1)
    if len(T) < 2 or (np.diff(T) <= 0).any() or T[0] <= 0:
        raise InputError(f"temperatures must be at least two increasing positive values, got {T.tolist()}")
    if n_frames < 1 or save_every < 1:
        raise InputError(f"n_frames and save_every must be positive, got {n_frames}, {save_every}")
    system, mds = build_system(pdb, solvent, forcefield, constraints, padding_nm=padding_nm, fast_gb=fast_gb,
                               box_shape=box_shape, hydrogen_mass=hydrogen_mass)
    solute_top = _load_pdb(pdb)
    z = _elements(solute_top.topology, str(pdb))
    dt_fs = float(timestep_fs) if timestep_fs is not None else (2.0 if mds.explicit else 1.0)
    npt = mds.explicit and pressure_bar is not None
    reps = [make_context(mds, t, friction_per_ps, dt_fs, int(seed) + 17 * k, platform, pressure_bar)
            for k, t in enumerate(T)]
    for k, (ctx, integ) in enumerate(reps):
        minimise(ctx, minimize, mds.explicit)
        ctx.setVelocitiesToTemperature(T[k] * u.kelvin, int(seed) + 17 * k + 1)
        if equilibration_steps:
            integ.step(int(equilibration_steps))
    betas = 1.0 / np.array([kT_of(t) for t in T])
    rng = np.random.default_rng(seed)
    n = len(z)
    R, F, E = np.empty((n_frames, n, 3)), np.empty((n_frames, n, 3)), np.empty(n_frames)
    origin = np.arange(len(T))  # slot each configuration started in
    frame_origin = np.empty(n_frames, dtype=int)
    attempts, accepts = np.zeros(len(T) - 1), np.zeros(len(T) - 1)
    plat = reps[0][0].getPlatform().getName()
    desc = f"OpenMM REMD ({Path(pdb).name}, {solvent}, {len(T)} replicas, {plat})"
    for f in tqdm(range(n_frames), desc=desc, disable=not progress, mininterval=1.0):
        for _, integ in reps:
            integ.step(save_every)
        R[f], F[f], E[f] = frame(reps[0][0], mds.solute)
        frame_origin[f] = origin[0]
        states = [ctx.getState(getPositions=True, getVelocities=True, getEnergy=True) for ctx, _ in reps]
        U = np.array([s.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole) for s in states])
        if npt:
            vol = np.array([s.getPeriodicBoxVolume().value_in_unit(u.nanometer**3) for s in states])
            U = U + pressure_bar * BAR_NM3_TO_KCAL * vol
        parity = f % 2
        perm, acc = exchange_sweep(betas, U, rng, parity)
        attempts[parity::2] += 1
        accepts += acc
        if (perm != np.arange(len(T))).any():
            for k, src in enumerate(perm):
                if src == k:
                    continue
                ctx = reps[k][0]
                if mds.explicit:
                    ctx.setPeriodicBoxVectors(*states[src].getPeriodicBoxVectors())
                ctx.setPositions(states[src].getPositions())
                ctx.setVelocities(states[src].getVelocities() * float(np.sqrt(T[k] / T[src])))
            origin = origin[perm]
    names = np.array([a.name for a in solute_top.topology.atoms()])
    extra = {"pdb": np.array(_pdb_text(solute_top.topology, solute_top.positions)), "atom_names": names,
             "times_fs": (np.arange(1, n_frames + 1) * save_every * dt_fs).astype(np.float64),
             "temperatures": T, "acceptance": np.where(attempts > 0, accepts / np.maximum(attempts, 1), np.nan),
             "origin": frame_origin, "platform": np.array(plat),
             "equilibration_steps": np.array(int(equilibration_steps)), "timestep_fs": np.array(dt_fs)}
    if mds.explicit:
        extra["box_energy"] = E
    ladder = "/".join(f"{t:g}" for t in T)
    return Dataset(R=R, z=z, E=None if mds.explicit else E, F=F, name=Path(pdb).stem,
                   theory=f"OpenMM {forcefield} {solvent} {T[0]:g} K (REMD {ladder} K)", extra=extra,
                   source=str(pdb))
