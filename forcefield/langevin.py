"""Langevin dynamics (BAOAB splitting) for many replicas at once, on any torch device.

Shared by every simulator in the workbench (xTB MD, kernel force-field MD, CG MD).
Units: positions Å, velocities Å/fs, forces kcal/mol/Å, masses amu, time fs, temperature K,
friction 1/ps (converted to 1/fs inside).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .units import KB_KCAL, KCAL_PER_AMU_A2_TO_A_PER_FS2

ForceFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
CheckFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Trajectory:
    """Saved frames of a Langevin run.

    Attributes
    ----------
    R, F : (n_saved, B, N, 3) positions (Å) and forces (kcal/mol/Å), float64 numpy.
    E : (n_saved, B) potential energies (kcal/mol).
    n_valid : (B,) frames saved per replica before it was stopped (all, if it never was).
    stopped : list of (replica, step, reason) for replicas stopped by the instability check.
    dt_fs, save_every : time step and save interval, to recover times.
    """

    R: np.ndarray
    F: np.ndarray
    E: np.ndarray
    n_valid: np.ndarray
    stopped: list[tuple[int, int, str]] = field(default_factory=list)
    dt_fs: float = 1.0
    save_every: int = 1

    @property
    def times_fs(self) -> np.ndarray:
        return (np.arange(len(self.R)) + 1) * self.save_every * self.dt_fs

    def replica(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Valid frames (R, F, E) of replica ``b``."""
        n = int(self.n_valid[b])
        return self.R[:n, b], self.F[:n, b], self.E[:n, b]


def maxwell_boltzmann(masses: torch.Tensor, shape: tuple[int, ...], temperature: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Velocities (Å/fs) drawn at ``temperature`` for masses (N,) in amu; ``shape`` is (B, N, 3)."""
    std = torch.sqrt(KB_KCAL * temperature * KCAL_PER_AMU_A2_TO_A_PER_FS2 / masses)[None, :, None]
    v = torch.randn(shape, generator=generator, dtype=masses.dtype, device="cpu").to(masses.device) * std
    return v - (v * masses[None, :, None]).sum(1, keepdim=True) / masses.sum()  # no centre-of-mass drift


def simulate(force_fn: ForceFn, x0: torch.Tensor, masses: torch.Tensor, n_steps: int, save_every: int = 1,
             dt_fs: float = 1.0, temperature: float = 300.0, friction_per_ps: float = 1.0,
             v0: torch.Tensor | None = None, seed: int = 0, check_fn: CheckFn | None = None,
             check_every: int | None = None, progress: bool = True, desc: str = "Langevin MD") -> Trajectory:
    """Run BAOAB Langevin dynamics of B replicas of an N-particle system.

    Parameters
    ----------
    force_fn : maps positions (B, N, 3) to (energies (B,), forces (B, N, 3)) in kcal/mol(/Å).
    x0 : (B, N, 3) or (N, 3) starting positions in Å; its device and dtype are used throughout.
    masses : (N,) masses in amu.
    n_steps, save_every : number of steps, and a frame is saved every ``save_every`` steps.
    dt_fs, temperature, friction_per_ps : time step (fs), bath temperature (K), friction (1/ps).
    v0 : starting velocities (Å/fs); drawn from Maxwell-Boltzmann when None.
    check_fn : optional instability test mapping positions (B, N, 3) to a bool tensor (B,) that is True
        for replicas to stop; non-finite positions or forces always stop a replica. A stopped replica
        keeps its frames saved before the event and is no longer updated.
    check_every : steps between checks (default: ``save_every``).
    progress : show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    x = x0.clone() if x0.dim() == 3 else x0.clone()[None]
    dev, dt = x.device, x.dtype
    B, N, _ = x.shape
    m = masses.to(device=dev, dtype=dt)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    v = maxwell_boltzmann(m, (B, N, 3), temperature, gen) if v0 is None else v0.to(dev, dt).clone()
    if v.dim() == 2:
        v = v[None].expand(B, N, 3).clone()
    inv_m = (KCAL_PER_AMU_A2_TO_A_PER_FS2 / m)[None, :, None]
    gamma = friction_per_ps / 1000.0
    c1 = float(np.exp(-gamma * dt_fs))
    c2 = float(np.sqrt(1.0 - c1 * c1))
    vstd = torch.sqrt(KB_KCAL * temperature * inv_m)
    check_every = check_every or save_every
    n_saved = n_steps // save_every
    R = np.full((n_saved, B, N, 3), np.nan)
    Fs = np.full((n_saved, B, N, 3), np.nan)
    Es = np.full((n_saved, B), np.nan)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    n_valid = np.zeros(B, dtype=int)
    stopped: list[tuple[int, int, str]] = []
    E, F = force_fn(x)
    half = 0.5 * dt_fs
    it = tqdm(range(1, n_steps + 1), desc=desc, disable=not progress, mininterval=1.0)
    for step in it:
        a = alive[:, None, None]
        v_new = v + half * F * inv_m
        x_new = x + half * v_new
        noise = torch.randn((B, N, 3), generator=gen, dtype=dt).to(dev)
        v_new = c1 * v_new + c2 * vstd * noise
        x_new = x_new + half * v_new
        x = torch.where(a, x_new, x)
        E_new, F_new = force_fn(x)
        F = torch.where(a, F_new, F)
        E = torch.where(alive, E_new, E)
        v = torch.where(a, v_new + half * F * inv_m, v)
        if step % check_every == 0 or step % save_every == 0:
            bad = ~(torch.isfinite(x).flatten(1).all(1) & torch.isfinite(F).flatten(1).all(1))
            reason = {}
            for b in torch.nonzero(bad & alive).flatten().tolist():
                reason[b] = "non-finite positions or forces"
            if check_fn is not None:
                flag = check_fn(torch.nan_to_num(x)) & alive & ~bad
                for b in torch.nonzero(flag).flatten().tolist():
                    reason[b] = "instability check failed"
                bad = bad | flag
            newly = bad & alive
            if newly.any():
                for b, why in reason.items():
                    stopped.append((b, step, why))
                alive = alive & ~newly
        if step % save_every == 0:
            k = step // save_every - 1
            al = alive.cpu().numpy()
            R[k][al] = x.detach().cpu().double().numpy()[al]
            Fs[k][al] = F.detach().cpu().double().numpy()[al]
            Es[k][al] = E.detach().cpu().double().numpy()[al]
            n_valid[al] += 1
        if not alive.any():
            break
    return Trajectory(R=R, F=Fs, E=Es, n_valid=n_valid, stopped=stopped, dt_fs=dt_fs, save_every=save_every)
