"""Scale-out of independent work on Dask distributed: labelling chunks of frames, MD replica groups, σ grids.

One vocabulary for every caller: ``client`` is

* ``None``: run serially in this process (no Dask at all);
* ``"local"``: a :class:`distributed.LocalCluster` of worker *processes* on this machine, created for the
  call and shut down after it (``n_workers`` processes, default the CPU count, one thread each);
* ``"tcp://host:8786"`` (any scheduler address): connect to an existing cluster, which may span machines
  (start it with ``dask scheduler`` and ``dask worker tcp://host:8786`` on each machine);
* a :class:`distributed.Client`: used as is and left open.

Functions sent to workers must be importable there (module-level functions of installed packages); each
worker is a fresh process whose OpenMP/BLAS libraries start with one thread (Dask's default environment).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import InputError

ClientLike = Any  # None | "local" | scheduler address | distributed.Client


def get_client(scheduler: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1):
    """A :class:`distributed.Client`: to a new local cluster of processes, or to ``scheduler`` (an address).

    A local cluster is created by the client itself, so ``client.close()`` (or leaving a ``with`` block)
    also shuts the cluster down. The dashboard is off and Dask's logging is limited to errors.

    Parameters
    ----------
    scheduler : ``None`` or ``"local"`` for a new local cluster; else a scheduler address such as
        ``"tcp://host:8786"`` of a running cluster (``n_workers`` and ``threads_per_worker`` are ignored).
    n_workers : worker processes of a local cluster (default: ``os.cpu_count()``).
    threads_per_worker : threads per worker process (keep 1 for numerical work that is already threaded).
    """
    from distributed import Client

    if scheduler is not None and scheduler != "local":
        if not isinstance(scheduler, str) or "://" not in scheduler:
            raise InputError(f"scheduler must be 'local' or an address like 'tcp://host:8786', got {scheduler!r}")
        return Client(scheduler)
    n = int(n_workers) if n_workers is not None else (os.cpu_count() or 1)
    if n < 1 or int(threads_per_worker) < 1:
        raise InputError(f"n_workers and threads_per_worker must be >= 1, got {n}, {threads_per_worker}")
    return Client(n_workers=n, threads_per_worker=int(threads_per_worker), processes=True,
                  dashboard_address=None, silence_logs=logging.ERROR)


@contextmanager
def dask_client(client: ClientLike = None, n_workers: int | None = None, threads_per_worker: int = 1
                ) -> Iterator[Any]:
    """Context manager giving a Client (or ``None`` for serial work) from any ``client`` value above.

    A client (and local cluster) made here is closed on exit; a Client passed in stays open.
    """
    if client is None:
        yield None
        return
    if not isinstance(client, str):
        if not hasattr(client, "map") or not hasattr(client, "gather"):
            raise InputError(f"client must be None, 'local', a scheduler address or a distributed.Client, "
                             f"got {type(client).__name__}")
        yield client
        return
    c = get_client(client, n_workers, threads_per_worker)
    try:
        yield c
    finally:
        c.close()


def map_blocks(fn: Callable[..., Any], items: Sequence[Any], client: ClientLike = None,
               progress: bool = True, desc: str = "blocks", n_workers: int | None = None,
               common: Any = None) -> list[Any]:
    """``[fn(item) for item in items]``, on Dask workers when ``client`` is given; results in input order.

    Every item is one task (make items coarse: a chunk of frames, a group of replicas, one σ).
    ``fn`` must be deterministic for the results to equal the serial ones; it must be importable on the
    workers. A failing task raises its exception here. ``progress`` shows a tqdm bar (per finished item).
    ``common``: data every task needs (training arrays, a model); then ``fn(item, common)`` is called, and
    on a cluster ``common`` is sent to each worker once instead of with every task.
    """
    from tqdm.auto import tqdm

    items = list(items)
    with dask_client(client, n_workers) as c:
        if c is None:
            args = ((it,) if common is None else (it, common) for it in items)
            return [fn(*a) for a in tqdm(args, total=len(items), desc=desc, disable=not progress, mininterval=1.0)]
        if not items:
            return []
        from distributed import as_completed

        shared = None if common is None else c.scatter([common], broadcast=True)[0]
        if common is None:
            futures = c.map(fn, items, pure=False)
        else:
            futures = c.map(_with_common, items, fn=fn, common=shared, pure=False)
        bar = tqdm(total=len(futures), desc=desc, disable=not progress, mininterval=1.0)
        try:
            for _ in as_completed(futures):
                bar.update(1)
            return c.gather(futures)
        finally:
            bar.close()
            for f in futures + ([] if shared is None else [shared]):
                f.release()


def _with_common(item: Any, fn: Callable[..., Any], common: Any) -> Any:
    return fn(item, common)


def chunks(n: int, chunk_size: int) -> list[slice]:
    """Contiguous slices of ``range(n)`` of at most ``chunk_size`` items each (the last may be shorter)."""
    if int(chunk_size) < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(s, min(n, s + int(chunk_size))) for s in range(0, int(n), int(chunk_size))]


# ----------------------------------------------------------------------------- kernel σ grid
def _fit_sigma(sigma: float, data: tuple) -> tuple[float, float, dict, dict]:
    """Worker side of :func:`sigma_grid`: fit one σ, score on the validation frames (force MAE)."""
    import copy

    proto, R, z, F, E, Rv, Fv = data
    model = copy.copy(proto)
    model.info = {}
    model._fit_one(R, z, F, E, float(sigma))
    _, Fp = model.predict(Rv)
    return float(sigma), float(np.abs(Fp - Fv).mean()), model._state(), dict(model.info)


def sigma_grid(model, R: np.ndarray, z: np.ndarray, F: np.ndarray, E: np.ndarray | None, Rv: np.ndarray,
               Fv: np.ndarray, sigmas: Sequence[float], client: ClientLike = "local",
               n_workers: int | None = None, progress: bool = False) -> tuple[dict[float, float], tuple]:
    """Fit one kernel force field per σ on workers and score each on validation frames.

    Parameters
    ----------
    model : a :class:`~forcefield.kernel.KernelForceField` whose settings every fit uses; it is copied to
        the workers and not changed here. Its PCG checkpoint is not used on workers (the fits would share
        one file).
    R, z, F, E : training geometries (M, N, 3) Å, atomic numbers, forces kcal/mol/Å, energies or None.
    Rv, Fv : validation geometries and forces.
    sigmas : kernel widths to try.
    client : see the module docstring; ``None`` fits them one after another here.

    Returns
    -------
    (scores, best): ``scores`` maps σ to the validation force MAE (kcal/mol/Å); ``best`` is
    ``(mae, sigma, state, info)`` of the lowest MAE, ``state`` the model's saved arrays.
    """
    import copy

    if len(sigmas) == 0:
        raise InputError("sigma_grid: no σ values to try")
    proto = copy.copy(model)
    proto.checkpoint, proto.progress, proto.info = None, False, {}
    data = (proto, R, z, F, E, Rv, Fv)
    results = map_blocks(_fit_sigma, [float(s) for s in sigmas], client, progress=progress, desc="σ grid",
                         n_workers=n_workers, common=data)
    scores = {s: mae for s, mae, _, _ in results}
    s, mae, state, info = min(results, key=lambda r: r[1])
    return scores, (mae, s, state, info)
