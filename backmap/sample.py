"""Sampling from a trained backmapping VAE and optional short force-field relaxation of the samples.

Relaxation is a restrained energy minimisation: the force field (OpenMM amber14, or any callable force
provider ``r (N, 3) -> (E kcal/mol, F (N, 3) kcal/mol/Å)`` such as the kernel force field or
:class:`forcefield.reference.XTB`) plus harmonic restraints ``k/2 |r_a - r_a^0|^2`` that hold every heavy atom
near its decoded position, and so the heavy atoms near their beads; hydrogens move freely. It removes
strained bonds and close contacts left by the decoder without leaving the CG configuration.
Units: Å, kcal/mol, kcal/mol/Å².
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from forcefield.errors import InputError

ForceProvider = Callable[[np.ndarray], tuple[float, np.ndarray]]


@torch.no_grad()
def sample_positions(model: torch.nn.Module, X: np.ndarray, n_samples: int = 1, temperature: float = 1.0,
                     batch_size: int = 256, seed: int | None = None, device: str | torch.device = "cpu",
                     progress: bool = False) -> np.ndarray:
    """Prior samples (F, n_samples, N, 3) in Å for bead positions X (F, n, 3), in batches of CG frames."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    dtype = next(model.parameters()).dtype
    out = []
    per = max(1, batch_size // max(1, n_samples))
    for k in tqdm(range(0, len(X), per), desc="backmap sample", disable=not progress, mininterval=1.0):
        x = np.asarray(X[k:k + per], dtype=np.float64)
        centre = x.mean(1, keepdims=True)  # work near the origin: float32 keeps full precision
        xt = torch.as_tensor(x - centre, dtype=dtype, device=device)
        r = model.sample(xt, n_samples, temperature, generator=gen).cpu().double().numpy()
        out.append(r + centre[:, None])
    return np.concatenate(out, 0)


@torch.no_grad()
def reconstruct_positions(model: torch.nn.Module, R: np.ndarray, X: np.ndarray, sample: bool = False,
                          batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """Decoded posterior (its mean, or a draw) of true atoms R (F, N, 3) around beads X (F, n, 3): (F, N, 3)."""
    dtype = next(model.parameters()).dtype
    out = []
    for k in range(0, len(X), batch_size):
        x, r = np.asarray(X[k:k + batch_size], dtype=float), np.asarray(R[k:k + batch_size], dtype=float)
        c = x.mean(1, keepdims=True)
        rec = model.reconstruct(torch.as_tensor(r - c, dtype=dtype, device=device),
                                torch.as_tensor(x - c, dtype=dtype, device=device), sample=sample)
        out.append(rec.cpu().double().numpy() + c)
    return np.concatenate(out, 0)


def _held(z: np.ndarray, held: np.ndarray | None) -> np.ndarray:
    """Indices of the restrained atoms: ``held``, or every heavy atom."""
    if held is None:
        return np.flatnonzero(np.asarray(z) > 1)
    held = np.unique(np.asarray(held, dtype=int).reshape(-1))
    if held.size and (held.min() < 0 or held.max() >= len(z)):
        raise InputError(f"restrained atom {int(held.max() if held.max() >= len(z) else held.min())} out of range "
                         f"for {len(z)} atoms")
    return held


_BONDED = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "CMAPTorsionForce")


def _restrained_context(system, held: np.ndarray):
    """An OpenMM Context of ``system`` plus harmonic position restraints on the ``held`` atoms (strengths and
    centres set per structure)."""
    import openmm

    from forcefield.reference.openmm_md import _platform

    force = openmm.CustomExternalForce("0.5*kr*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    for name in ("kr", "x0", "y0", "z0"):  # kr per atom: 0 releases an atom
        force.addPerParticleParameter(name)
    for a in held:
        force.addParticle(int(a), [0.0, 0.0, 0.0, 0.0])
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), _platform(None, system.getNumParticles()))
    return ctx, force


def _misplaced(r: np.ndarray, z: np.ndarray, bonds: np.ndarray, cutoff: float = 1.0) -> np.ndarray:
    """Atoms of r (N, 3) Å whose decoded positions carry no usable information: closer than ``cutoff`` to an
    atom they are not bonded to (1-3 neighbours sit ≥ 1.5 Å apart), or in a topology bond shorter than 0.7 or
    longer than 1.3 times the sum of covalent radii (a bond the valid-graph test would count as broken)."""
    from forcefield.elements import COVALENT_RADII

    d = np.linalg.norm(r[:, None] - r[None], axis=-1)
    close = np.triu(d < cutoff, 1)
    close[bonds[:, 0], bonds[:, 1]] = close[bonds[:, 1], bonds[:, 0]] = False
    i, j = np.nonzero(close)
    rad = COVALENT_RADII[np.asarray(z, dtype=int)]
    ratio = d[bonds[:, 0], bonds[:, 1]] / (rad[bonds[:, 0]] + rad[bonds[:, 1]])
    bad = bonds[(ratio < 0.7) | (ratio > 1.3)]
    return np.unique(np.concatenate([i, j, bad.ravel()])).astype(int)


def relax_openmm(R: np.ndarray, pdb: str | os.PathLike, z: np.ndarray, k_restraint: float = 10.0,
                 max_iterations: int = 200, tolerance: float = 1.0, solvent: str = "vacuum",
                 progress: bool = False, held: np.ndarray | None = None, bonded_first: bool = True,
                 release_overlaps: bool = True) -> np.ndarray:
    """Restrained amber14 minimisation of each structure R (..., N, 3) (Å); the ``held`` atoms (default: every
    heavy atom) are held near their start.

    Decoded structures can put two atoms on top of each other, or an atom far from its bonded neighbours.
    ``release_overlaps`` frees the restraints of such atoms (closer than 1 Å to an atom they are not bonded to,
    or in a bond outside 0.7-1.3 times the covalent-radii length; their decoded positions carry no information)
    and nudges them (seeded, 0.3 Å) to break symmetric overlaps, and
    ``bonded_first`` minimises with the bonded terms alone (bonds, angles, torsions; same restraints) before the
    full force field, so that such atoms are first placed along the bond graph, where the non-bonded terms' huge
    forces would stall the minimiser. ``pdb`` is a PDB file (or PDB text) of the topology; ``k_restraint`` in
    kcal/mol/Å²; ``tolerance`` in kJ/mol/nm (OpenMM's unit for the minimiser's force tolerance).
    """
    import openmm
    from tqdm.auto import tqdm

    from forcefield.reference.openmm_md import build_system
    from forcefield.units import ANGSTROM_PER_NM, KJ_PER_KCAL

    R = np.asarray(R, dtype=float)
    shape = R.shape
    R = R.reshape(-1, shape[-2], 3)
    with tempfile.TemporaryDirectory() as d:
        path = Path(pdb) if not _is_pdb_text(pdb) else Path(d) / "top.pdb"
        if _is_pdb_text(pdb):
            path.write_text(str(pdb))
        system, mds = build_system(path, solvent)
    bonds = np.array(sorted(tuple(sorted((b[0].index, b[1].index))) for b in mds.topology.bonds()),
                     dtype=int).reshape(-1, 2)
    if system.getNumParticles() != shape[-2]:
        raise InputError(f"{pdb if not _is_pdb_text(pdb) else 'topology'}: {system.getNumParticles()} atoms, "
                         f"structures have {shape[-2]}")
    hold = _held(z, held)
    kr = k_restraint * KJ_PER_KCAL * ANGSTROM_PER_NM**2
    stages = []
    if bonded_first:
        bonded = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
        for i in reversed(range(bonded.getNumForces())):
            if type(bonded.getForce(i)).__name__ not in _BONDED:
                bonded.removeForce(i)
        stages.append(_restrained_context(bonded, hold))
    stages.append(_restrained_context(system, hold))
    out = np.empty_like(R)
    for s in tqdm(range(len(R)), desc="relax (OpenMM)", disable=not progress, mininterval=1.0):
        r_nm = R[s] / ANGSTROM_PER_NM
        free = set(_misplaced(R[s], z, bonds).tolist()) if release_overlaps else set()
        pos = r_nm.copy()
        if free:  # atoms on top of each other: a seeded nudge breaks their symmetry for the minimiser
            idx = np.array(sorted(free))
            pos[idx] += np.random.default_rng(s).normal(scale=0.03, size=(len(idx), 3))  # nm
        for ctx, force in stages:
            for k, a in enumerate(hold):
                force.setParticleParameters(k, int(a), [0.0 if int(a) in free else kr, *r_nm[a].tolist()])
            force.updateParametersInContext(ctx)
            ctx.setPositions(pos)
            openmm.LocalEnergyMinimizer.minimize(ctx, tolerance, max_iterations)
            pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
        out[s] = np.asarray(pos) * ANGSTROM_PER_NM
    return out.reshape(shape)


def relax_callable(R: np.ndarray, force_fn: ForceProvider, z: np.ndarray, k_restraint: float = 10.0,
                   n_steps: int = 100, max_step: float = 0.05, fmax: float = 0.5,
                   held: np.ndarray | None = None) -> np.ndarray:
    """Restrained minimisation with a callable force provider (FIRE), the ``held`` atoms (default: every heavy
    atom) near their start.

    ``force_fn(r)`` returns (energy kcal/mol, forces (N, 3) kcal/mol/Å); ``max_step`` caps an atom's move per
    step (Å); stops when the largest force falls below ``fmax`` (kcal/mol/Å).
    """
    R = np.asarray(R, dtype=float)
    shape = R.shape
    R = R.reshape(-1, shape[-2], 3)
    heavy = np.zeros(len(z), dtype=bool)
    heavy[_held(z, held)] = True
    out = np.empty_like(R)
    for s, r0 in enumerate(R):
        r, v = r0.copy(), np.zeros_like(r0)
        dt, alpha, n_pos = 0.1, 0.1, 0
        for _ in range(n_steps):
            _, f = force_fn(r)
            f = np.asarray(f, dtype=float) - k_restraint * (r - r0) * heavy[:, None]
            if np.abs(f).max() < fmax:
                break
            p = (f * v).sum()
            if p > 0:
                vn, fn = np.linalg.norm(v), np.linalg.norm(f)
                v = (1 - alpha) * v + alpha * f / max(fn, 1e-12) * vn
                n_pos += 1
                if n_pos > 5:
                    dt, alpha = min(dt * 1.1, 1.0), alpha * 0.99
            else:
                v[:] = 0.0
                dt, alpha, n_pos = dt * 0.5, 0.1, 0
            v = v + dt * f
            step = dt * v
            big = np.linalg.norm(step, axis=1).max()
            if big > max_step:
                step *= max_step / big
            r = r + step
        out[s] = r
    return out.reshape(shape)


def _is_pdb_text(p: str | os.PathLike) -> bool:
    return isinstance(p, str) and "\n" in p
