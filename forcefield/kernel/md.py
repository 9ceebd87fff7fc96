"""Supplying reference forces with a kernel force field: labelling and Langevin MD on many replicas.

Units: Å, kcal/mol, kcal/mol/Å, fs, K, amu.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..dataset import Dataset
from ..elements import masses
from ..errors import InputError, where
from ..langevin import Trajectory, simulate


def label_dataset(model, ds: Dataset, batch_size: int | None = None) -> Dataset:
    """A copy of ``ds`` whose energies and forces are the model's predictions."""
    if not np.array_equal(np.asarray(ds.z), model.z):
        raise InputError(f"{where(ds.source)}atoms {list(ds.z)} do not match the model's {list(model.z)}")
    E, F = model.predict(ds.R, batch_size=batch_size)
    out = ds.subset(slice(None))
    out.E, out.F, out.theory = E, F, "kernel force field"
    return out


def label_universe(model, u: Any, selection: str = "all", start: int | None = None, stop: int | None = None,
                   step: int | None = None) -> Dataset:
    """Label the frames of an MDAnalysis Universe/AtomGroup (atoms in the model's order) with the model."""
    ds = Dataset.from_universe(u, selection=selection, start=start, stop=stop, step=step)
    return label_dataset(model, ds)


def run_md(model, R0: np.ndarray, n_steps: int, n_replicas: int = 1, save_every: int = 10,
           dt_fs: float = 0.5, temperature: float = 300.0, friction_per_ps: float = 1.0, seed: int = 0,
           max_bond_change: float = 0.5, progress: bool = True) -> Trajectory:
    """BAOAB Langevin MD of ``n_replicas`` copies on the model's surface (forcefield.langevin.simulate).

    R0 is one geometry (N, 3) or one per replica (B, N, 3), in Å. A replica is stopped when a covalent bond
    (from the first geometry) changes by more than ``max_bond_change`` Å (the MDsim stability rule).
    Runs on the model's device in float64.
    """
    from ..geometry import covalent_bonds

    R0 = np.asarray(R0, dtype=float)
    if R0.ndim == 2:
        R0 = np.repeat(R0[None], n_replicas, axis=0)
    if R0.ndim != 3 or R0.shape[1:] != (model.n_atoms, 3):
        raise InputError(f"start geometry must be ({model.n_atoms}, 3) or (B, {model.n_atoms}, 3), got {R0.shape}")
    if not np.isfinite(R0).all():
        raise InputError("start geometry contains NaN or infinite values")
    dev = model.device
    bonds = covalent_bonds(R0[0], model.z)
    ref = torch.as_tensor(np.linalg.norm(R0[0][bonds[:, 0]] - R0[0][bonds[:, 1]], axis=-1), device=dev)
    bi = torch.as_tensor(bonds[:, 0], device=dev)
    bj = torch.as_tensor(bonds[:, 1], device=dev)

    def check(x: torch.Tensor) -> torch.Tensor:
        if len(bonds) == 0:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        d = torch.linalg.vector_norm(x[:, bi] - x[:, bj], dim=-1)
        return ((d - ref).abs() > max_bond_change).any(1)

    def force_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.predict_torch(x)

    return simulate(force_fn, torch.as_tensor(R0, dtype=torch.float64, device=dev),
                    torch.as_tensor(masses(model.z)), n_steps=n_steps, save_every=save_every, dt_fs=dt_fs,
                    temperature=temperature, friction_per_ps=friction_per_ps, seed=seed, check_fn=check,
                    progress=progress, desc="kernel-FF MD")


def trajectory_to_dataset(traj: Trajectory, z: np.ndarray, replica: int | None = None, name: str = "kernel MD"
                          ) -> Dataset:
    """Valid frames of one replica (or of all, concatenated) as a :class:`Dataset`."""
    reps = range(traj.R.shape[1]) if replica is None else [replica]
    parts = []
    for b in reps:
        R, F, E = traj.replica(b)
        if len(R):
            parts.append(Dataset(R=R, z=z, E=E, F=F, name=name, theory="kernel force field"))
    if not parts:
        raise InputError("the MD run saved no valid frames")
    return Dataset.concatenate(parts)
