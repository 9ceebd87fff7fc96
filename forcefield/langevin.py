"""Langevin dynamics (BAOAB splitting) for many replicas at once, on any torch device.

Shared by every simulator in the workbench (xTB MD, kernel force-field MD, CG MD).
Units: positions Å, velocities Å/fs, forces kcal/mol/Å, masses amu, time fs, temperature K,
friction 1/ps (converted to 1/fs inside).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .units import KB_KCAL, KCAL_PER_AMU_A2_TO_A_PER_FS2

if TYPE_CHECKING:
    from .remd import TemperatureLadders

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
    temperature: np.ndarray | None = None  # (n_saved, B) K of each saved frame, when replicas exchange

    def at_temperature(self, b: int, temperature: float) -> np.ndarray:
        """Indices of replica ``b``'s valid frames saved at ``temperature`` (all valid frames without exchange)."""
        n = int(self.n_valid[b])
        if self.temperature is None:
            return np.arange(n)
        return np.flatnonzero(np.isclose(self.temperature[:n, b], temperature))

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


def _baoab_step(force_fn: ForceFn, x: torch.Tensor, v: torch.Tensor, F: torch.Tensor, noise: torch.Tensor,
                inv_m: torch.Tensor, vstd: torch.Tensor, half: float, c1: float, c2: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One BAOAB step (B: half kick, A: half drift, O: exact Ornstein-Uhlenbeck, A, force, B); pure function."""
    v = v + half * F * inv_m
    x = x + half * v
    v = c1 * v + c2 * vstd * noise
    x = x + half * v
    E, F = force_fn(x)
    v = v + half * F * inv_m
    return x, v, F, E


def _step_mismatch(new: tuple, ref: tuple, rtol: float = 1e-3) -> str:
    """'' when a compiled step's (x, v, F, E) equal the eager step's to ``rtol`` of each one's largest
    magnitude (rounding differences of float32 are ~1e-6 of it), else which one differs and by how much."""
    for name, a, b in zip(("positions", "velocities", "forces", "energies"), new, ref):
        scale = max(1.0, float(b.abs().max()))
        err = float((a - b).abs().max())
        if not err <= rtol * scale:
            return f"{name}: max difference {err:.3g} against a largest value of {scale:.3g}"
    return ""


def _compiled_step(step_fn: Callable, force_fn: ForceFn, args: tuple, check: bool, cuda: bool
                   ) -> tuple[tuple, Callable | None]:
    """One step by the compiled ``step_fn`` and the step function to go on with: where compiling fails, or
    (``check``) where the step disagrees with the eager one (a miscompilation), a warning, the eager step and
    None (eager from now on)."""
    try:
        new = step_fn(*args)
    except Exception as e:  # noqa: BLE001 - compiling failed: the eager step from now on
        warnings.warn(f"compiled MD step unavailable ({type(e).__name__}: {e}); using the eager step",
                      RuntimeWarning, stacklevel=3)
        return _baoab_step(force_fn, *args), None
    if cuda:  # CUDA-graph outputs are overwritten by the next replay: keep copies
        new = tuple(t.clone() for t in new)
    if check:
        ref = _baoab_step(force_fn, *args)
        bad = _step_mismatch(new, ref)
        if bad:
            warnings.warn(f"compiled MD step disagrees with the eager step ({bad}); using the eager step",
                          RuntimeWarning, stacklevel=3)
            return ref, None
    return new, step_fn


def compile_step(force_fn: ForceFn, device: torch.device) -> Callable | None:
    """One BAOAB step whose ``force_fn`` is fused by ``torch.compile`` (CUDA graphs on a CUDA device), or None
    when torch.compile is unavailable here. The first call compiles (seconds to minutes on a CPU).

    Only the force is compiled; the integrator's few element-wise updates stay eager. Compiling the whole
    step was no faster and, with torch 2.13's inductor on a CPU, miscompiled the forces of a gated
    FeatureNet CG potential under ``no_grad`` (hundreds of kcal/mol/Å off); :func:`simulate` still checks
    the first compiled step against the eager one.
    """
    try:
        mode = "reduce-overhead" if device.type == "cuda" else None
        compiled = torch.compile(force_fn, dynamic=False, fullgraph=False, mode=mode)
        return lambda *a: _baoab_step(compiled, *a)
    except Exception:  # noqa: BLE001 - no compiler backend: the eager step is used
        return None


def simulate(force_fn: ForceFn, x0: torch.Tensor, masses: torch.Tensor, n_steps: int, save_every: int = 1,
             dt_fs: float = 1.0, temperature: float = 300.0, friction_per_ps: float = 1.0,
             v0: torch.Tensor | None = None, seed: int = 0, check_fn: CheckFn | None = None,
             check_every: int | None = None, progress: bool = True, desc: str = "Langevin MD",
             compile: bool = False, exchange: "TemperatureLadders | None" = None) -> Trajectory:
    """Run BAOAB Langevin dynamics of B replicas of an N-particle system.

    Parameters
    ----------
    force_fn : maps positions (B, N, 3) to (energies (B,), forces (B, N, 3)) in kcal/mol(/Å).
    x0 : (B, N, 3) or (N, 3) starting positions in Å; its device and dtype are used throughout.
    masses : (N,) masses in amu.
    n_steps, save_every : number of steps, and a frame is saved every ``save_every`` steps.
    dt_fs, temperature, friction_per_ps : time step (fs), bath temperature (K; one, or one per replica (B,)),
        friction (1/ps).
    v0 : starting velocities (Å/fs); drawn from Maxwell-Boltzmann when None.
    check_fn : optional instability test mapping positions (B, N, 3) to a bool tensor (B,) that is True
        for replicas to stop; non-finite positions or forces always stop a replica. A stopped replica
        keeps its frames saved before the event and is no longer updated.
    check_every : steps between checks (default: ``save_every``).
    progress : show a tqdm progress bar.
    compile : fuse each step (integrator and ``force_fn``) with ``torch.compile`` (:func:`compile_step`);
        the eager step is used when compiling is not possible. Same update, same distribution.
    exchange : temperature replica exchange (:class:`forcefield.remd.TemperatureLadders`, B walkers): every
        ``exchange.every`` steps neighbouring temperatures of each ladder try to swap; ``temperature`` is
        then ignored, and the returned trajectory records each saved frame's temperature.

    Notes
    -----
    All replicas advance as one batch. The noise of each step is drawn into one preallocated buffer (on the
    CPU from a CPU generator seeded with ``seed``, so CPU runs are reproducible; on other devices from a
    generator of that device); frames are copied into preallocated arrays; stopped replicas are frozen
    with masks only once one has stopped.
    """
    from tqdm.auto import tqdm

    x = x0.clone() if x0.dim() == 3 else x0.clone()[None]
    dev, dt = x.device, x.dtype
    B, N, _ = x.shape
    m = masses.to(device=dev, dtype=dt)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if exchange is not None:
        if exchange.n_walkers != B:
            raise ValueError(f"the exchange has {exchange.n_walkers} walkers for {B} replicas")
        temperature = exchange.walker_temperature
    per_replica = np.ndim(temperature) > 0
    if per_replica and np.shape(temperature) != (B,):
        raise ValueError(f"temperature must be one value or one per replica ({B}), got shape {np.shape(temperature)}")
    T_b = torch.as_tensor(np.asarray(temperature, dtype=float), dtype=dt, device=dev)
    if v0 is not None:
        v = v0.to(dev, dt).clone()
    elif per_replica:
        v = maxwell_boltzmann(m, (B, N, 3), 1.0, gen) * torch.sqrt(T_b)[:, None, None]
    else:
        v = maxwell_boltzmann(m, (B, N, 3), temperature, gen)
    if v.dim() == 2:
        v = v[None].expand(B, N, 3).clone()
    inv_m = (KCAL_PER_AMU_A2_TO_A_PER_FS2 / m)[None, :, None]
    gamma = friction_per_ps / 1000.0
    c1 = float(np.exp(-gamma * dt_fs))
    c2 = float(np.sqrt(1.0 - c1 * c1))
    if per_replica:
        vstd = torch.sqrt(KB_KCAL * T_b[:, None, None] * inv_m)
    else:
        vstd = torch.sqrt(KB_KCAL * temperature * inv_m)
    check_every = check_every or save_every
    n_saved = n_steps // save_every
    R = np.full((n_saved, B, N, 3), np.nan)
    Fs = np.full((n_saved, B, N, 3), np.nan)
    Es = np.full((n_saved, B), np.nan)
    Ts = np.full((n_saved, B), np.nan) if exchange is not None else None
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    all_alive = True
    n_valid = np.zeros(B, dtype=int)
    stopped: list[tuple[int, int, str]] = []
    E, F = force_fn(x)
    half = 0.5 * dt_fs
    if dev.type == "cpu":
        noise = torch.empty((B, N, 3), dtype=dt)
        ngen = gen
    else:
        noise = torch.empty((B, N, 3), dtype=dt, device=dev)
        ngen = torch.Generator(device=dev).manual_seed(int(seed) + 1)
    step_fn = compile_step(force_fn, dev) if compile else None
    checked = False
    it = tqdm(range(1, n_steps + 1), desc=desc, disable=not progress, mininterval=1.0)
    for step in it:
        torch.randn((B, N, 3), generator=ngen, dtype=dt, device=noise.device, out=noise)
        if step_fn is None and all_alive:  # in place: six tensor operations besides the forces
            v.addcmul_(F, inv_m, value=half)
            x.add_(v, alpha=half)
            v.mul_(c1).addcmul_(vstd, noise, value=c2)
            x.add_(v, alpha=half)
            E, F = force_fn(x)
            v.addcmul_(F, inv_m, value=half)
        else:
            args = (x, v, F, noise, inv_m, vstd, half, c1, c2)
            if step_fn is not None:
                new, step_fn = _compiled_step(step_fn, force_fn, args, not checked, dev.type == "cuda")
                checked = True
            else:
                new = _baoab_step(force_fn, *args)
            if all_alive:
                x, v, F, E = new
            else:
                a = alive[:, None, None]
                x, v = torch.where(a, new[0], x), torch.where(a, new[1], v)
                F, E = torch.where(a, new[2], F), torch.where(alive, new[3], E)
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
                all_alive = False
        if exchange is not None and step % exchange.every == 0 and exchange(E, v, alive):
            vstd.copy_(torch.sqrt(KB_KCAL * torch.as_tensor(exchange.walker_temperature, dtype=dt, device=dev)
                                  [:, None, None] * inv_m))
        if step % save_every == 0:
            k = step // save_every - 1
            al = alive.cpu().numpy()
            if Ts is not None:
                Ts[k] = exchange.walker_temperature
            R[k][al] = x.detach().cpu().double().numpy()[al]
            Fs[k][al] = F.detach().cpu().double().numpy()[al]
            Es[k][al] = E.detach().cpu().double().numpy()[al]
            n_valid[al] += 1
        if not all_alive and not alive.any():
            break
    return Trajectory(R=R, F=Fs, E=Es, n_valid=n_valid, stopped=stopped, dt_fs=dt_fs, save_every=save_every,
                      temperature=Ts)
