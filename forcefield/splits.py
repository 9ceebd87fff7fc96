"""Train / validation / test splits, written once for every package.

Frames from MD are correlated in time, so a random shuffle leaks near-copies of validation frames into
training. :func:`block_split` cuts each trajectory (or replica) into contiguous blocks: the first part of
every trajectory trains, the last part validates. Only frames that are independent draws (e.g. labels of
frames picked far apart) may use :func:`random_split`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError


def _lengths(n: int, lengths: Sequence[int] | None) -> list[int]:
    if lengths is None:
        return [int(n)]
    ls = [int(c) for c in lengths if int(c) > 0]
    if sum(ls) != n:
        raise InputError(f"trajectory lengths add up to {sum(ls)} frames, but there are {n}")
    return ls


def block_split(n: int, val_fraction: float, lengths: Sequence[int] | None = None,
                min_val: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split of ``n`` frames: the last ``val_fraction`` of each trajectory validates.

    Parameters
    ----------
    n : total number of frames (trajectories concatenated in order).
    val_fraction : share of each trajectory held out, in [0, 1).
    lengths : frames of each trajectory (replica), in order; default: one trajectory.
    min_val : at least this many validation frames in all (taken from the longest trajectories' ends).

    Returns
    -------
    (train, val) index arrays, sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ls = _lengths(n, lengths)
    tr, va, start = [], [], 0
    for c in ls:
        k = int(round(val_fraction * c))
        if val_fraction > 0 and c > 1:
            k = min(max(k, 1), c - 1)
        else:
            k = 0
        tr.append(np.arange(start, start + c - k))
        va.append(np.arange(start + c - k, start + c))
        start += c
    train, val = np.concatenate(tr).astype(int), np.concatenate(va).astype(int)
    if val_fraction > 0 and len(val) < min_val:
        raise InputError(f"{n} frame(s) in {len(ls)} trajector(y/ies) are too few for a validation split")
    if len(train) == 0:
        raise InputError(f"{n} frame(s) leave nothing to train on")
    return train, val


def random_split(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split, only for frames that are independent draws (not consecutive MD frames)."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = 0 if n < 2 or val_fraction <= 0 else max(1, int(round(val_fraction * n)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def trajectory_lengths(extra: dict, n: int) -> list[int]:
    """Per-replica frame counts stored by the workbench's MD (``extra['replica_frames']``), else one trajectory."""
    c = extra.get("replica_frames") if extra else None
    return [n] if c is None else [int(x) for x in np.asarray(c).ravel() if int(x) > 0]
