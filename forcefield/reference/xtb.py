"""GFN2-xTB energies and forces through the ``tblite`` package, and xTB Langevin MD.

tblite works in Bohr and Hartree; inputs and outputs here are Å, kcal/mol and kcal/mol/Å.
"""
from __future__ import annotations

import numpy as np

from ..dataset import Dataset
from ..elements import check_z, masses
from ..errors import InputError
from ..units import BOHR_IN_ANGSTROM, HARTREE_IN_KCAL

FORCE_AU_TO_KCAL_A = HARTREE_IN_KCAL / BOHR_IN_ANGSTROM


class XTB:
    """A reusable GFN2-xTB calculator for one molecule (SCF restarts from the previous frame).

    Parameters
    ----------
    z : (N,) atomic numbers.
    method : ``"GFN2-xTB"`` (default) or ``"GFN1-xTB"``.
    charge, uhf : total charge and number of unpaired electrons.
    accuracy : tblite's accuracy setting (smaller is tighter).
    threads : OpenMP threads for tblite; default 1 below 200 atoms. tblite's threading costs far more than
        it gains on small molecules (here 60 alanine-dipeptide frames took 70 s on 2 busy cores with
        threads, 0.8 s without).
    """

    def __init__(self, z: np.ndarray, method: str = "GFN2-xTB", charge: float = 0.0, uhf: int = 0,
                 accuracy: float = 1.0, threads: int | None = None) -> None:
        self.z = check_z(np.asarray(z))
        self.method, self.charge, self.uhf, self.accuracy = method, charge, uhf, accuracy
        self.threads = threads if threads is not None else (1 if len(self.z) < 200 else None)
        self._calc = None
        self._res = None

    def _make(self, pos_bohr: np.ndarray) -> None:
        from tblite.interface import Calculator

        self._calc = Calculator(self.method, self.z.astype(int), pos_bohr, charge=self.charge, uhf=self.uhf)
        self._calc.set("verbosity", 0)
        self._calc.set("accuracy", self.accuracy)
        self._res = None

    def __call__(self, r: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (kcal/mol) and forces (N, 3) (kcal/mol/Å) of one geometry r (N, 3) in Å."""
        r = np.asarray(r, dtype=float)
        if r.shape != (len(self.z), 3):
            raise InputError(f"geometry must be ({len(self.z)}, 3), got {r.shape}")
        pos = r / BOHR_IN_ANGSTROM
        if self.threads is None:
            return self._single(pos)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads, user_api="openmp"):
            return self._single(pos)

    def _single(self, pos: np.ndarray) -> tuple[float, np.ndarray]:
        if self._calc is None:
            self._make(pos)
        else:
            self._calc.update(pos)
        try:
            self._res = self._calc.singlepoint(self._res) if self._res is not None else self._calc.singlepoint()
        except RuntimeError:  # SCF failed from the restart guess: start afresh once
            self._make(pos)
            self._res = self._calc.singlepoint()
        e = float(self._res.get("energy")) * HARTREE_IN_KCAL
        f = -np.asarray(self._res.get("gradient")) * FORCE_AU_TO_KCAL_A
        return e, f


def xtb_energy_forces(R: np.ndarray, z: np.ndarray, method: str = "GFN2-xTB", charge: float = 0.0,
                      uhf: int = 0, progress: bool = True, client=None, n_workers: int | None = None,
                      chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GFN2-xTB energies (M,) in kcal/mol and forces (M, N, 3) in kcal/mol/Å of geometries R (M, N, 3) in Å.

    Parameters
    ----------
    client : ``None`` (serial, here), ``"local"`` (a local Dask cluster of ``n_workers`` processes made for
        this call), a scheduler address ``"tcp://host:8786"`` or a Dask Client (see :mod:`forcefield.parallel`).
    chunk_size : frames per task. Each chunk gets its own calculator whose SCF restarts from the chunk's
        previous frame, so labels agree with serial labelling to the SCF tolerance, and bit for bit when the
        serial call uses the same ``chunk_size``. Default: all frames serially; four chunks per worker with
        a client.
    """
    from ..parallel import chunks, dask_client, map_blocks

    R = np.asarray(R, dtype=float)
    if R.ndim == 2:
        R = R[None]
    z = check_z(np.asarray(z))
    if R.ndim != 3 or R.shape[1:] != (len(z), 3):
        raise InputError(f"geometries must be (frames, {len(z)}, 3), got {R.shape}")
    bad = ~np.isfinite(R).all(axis=(1, 2))
    if bad.any():
        raise InputError(f"frame {int(np.argmax(bad))}: coordinates contain NaN or infinite values")
    if len(R) == 0:
        return np.empty(0), np.empty_like(R)
    with dask_client(client, n_workers) as c:
        if chunk_size is None:
            n_w = 1 if c is None else max(1, len(c.scheduler_info().get("workers", {})))
            chunk_size = len(R) if c is None else -(-len(R) // (4 * n_w))
        tasks = [(R[s], z, method, charge, uhf) for s in chunks(len(R), chunk_size)]
        if c is None and len(tasks) == 1:
            return _label_chunk(tasks[0], progress)
        out = map_blocks(_label_chunk, tasks, c, progress=progress, desc=f"{method} labels")
    return np.concatenate([e for e, _ in out]), np.concatenate([f for _, f in out])


def _label_chunk(task: tuple, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Label one chunk of frames with one calculator (also the task run on Dask workers)."""
    from tqdm.auto import tqdm

    R, z, method, charge, uhf = task
    calc = XTB(z, method, charge, uhf)
    E = np.empty(len(R))
    F = np.empty_like(R)
    for k in tqdm(range(len(R)), desc=f"{method} labels", disable=not progress, mininterval=1.0):
        E[k], F[k] = calc(R[k])
    return E, F


def label_dataset(ds: Dataset, method: str = "GFN2-xTB", charge: float = 0.0, uhf: int = 0,
                  progress: bool = True, client=None, n_workers: int | None = None,
                  chunk_size: int | None = None) -> Dataset:
    """A copy of ``ds`` with energies and forces replaced by GFN2-xTB labels.

    ``client``, ``n_workers``, ``chunk_size``: label chunks of frames on Dask workers
    (see :func:`xtb_energy_forces`).
    """
    E, F = xtb_energy_forces(ds.R, ds.z, method, charge, uhf, progress, client, n_workers, chunk_size)
    out = ds.subset(slice(None))
    out.E, out.F, out.theory = E, F, method
    return out


def xtb_md(R0: np.ndarray, z: np.ndarray, n_frames: int, save_every: int = 10, dt_fs: float = 0.5,
           temperature: float = 300.0, friction_per_ps: float = 1.0, seed: int = 0, method: str = "GFN2-xTB",
           charge: float = 0.0, uhf: int = 0, name: str = "molecule", progress: bool = True) -> Dataset:
    """Langevin (BAOAB) MD on the GFN2-xTB surface from geometry R0 (N, 3) in Å.

    Returns a :class:`Dataset` of ``n_frames`` frames saved every ``save_every`` steps of ``dt_fs`` fs,
    with xTB energies and forces.
    """
    import torch

    from ..langevin import simulate

    z = check_z(np.asarray(z))
    calc = XTB(z, method, charge, uhf)

    def force_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, f = calc(x[0].numpy())
        return torch.tensor([e], dtype=x.dtype), torch.from_numpy(f)[None].to(x.dtype)

    traj = simulate(force_fn, torch.as_tensor(np.asarray(R0, dtype=float)), torch.as_tensor(masses(z)),
                    n_steps=n_frames * save_every, save_every=save_every, dt_fs=dt_fs, temperature=temperature,
                    friction_per_ps=friction_per_ps, seed=seed, progress=progress, desc=f"{method} MD")
    n = int(traj.n_valid[0])
    if n < n_frames:
        raise RuntimeError(f"xTB MD became unstable after {n} frames: {traj.stopped}")
    return Dataset(R=traj.R[:, 0], z=z, E=traj.E[:, 0], F=traj.F[:, 0], name=name,
                   theory=f"{method} Langevin {temperature:g} K", extra={"times_fs": traj.times_fs})
