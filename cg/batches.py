"""Data side of the shared trainer (:mod:`cg.trainer`): seeded, rank-sharded index batches over frame tensors.

:class:`EpochBatchSampler` draws the order of epoch ``e`` from a generator seeded by ``(seed, e)`` (a resumed
run sees the same batches as an uninterrupted one) and shares every global batch out over the data-parallel
ranks (``batch[rank::world]``); :func:`loader` wraps it in a DataLoader that indexes whole batches at once.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from forcefield.errors import InputError


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(torch.utils.data.Sampler):
    """Index batches over ``indices``; order of epoch ``e`` drawn from a generator seeded by ``(seed, e)``.

    Each global batch of ``batch_size`` indices is shared out over the data-parallel ranks
    (``batch[rank::world]``). Training batches smaller than the world size are padded with the first
    indices of the epoch so every rank steps together; validation batches are not padded (a rank may skip
    one) unless there are fewer indices than ranks. ``drop_last`` drops a final partial batch unless it is the only one.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, pad: bool = True) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.pad = bool(drop_last), bool(pad)
        self.epoch, self.offset = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning with the epoch of this run; ``offset`` adds the epochs of earlier runs."""
        self.epoch = self.offset + int(epoch)

    def global_batches(self) -> list[np.ndarray]:
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng([self.seed, self.epoch]).permutation(len(idx))]
        n = len(idx)
        nb = n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)
        return [idx[k * self.batch_size:(k + 1) * self.batch_size] for k in range(nb)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = _rank_world()
        batches = self.global_batches()
        head = np.concatenate(batches)[:world] if batches else np.zeros(0, np.int64)
        pad = self.pad or len(self.indices) < world  # every rank needs a batch (its sums join a collective)
        for b in batches:
            if pad and len(b) < world and len(head):
                b = np.concatenate([b, np.resize(head, world - len(b))])
            part = b[rank::world]
            if len(part):
                yield torch.from_numpy(part)

    def __len__(self) -> int:
        rank, world = _rank_world()
        pad = self.pad or len(self.indices) < world
        return sum(1 for b in self.global_batches() if pad or len(b[rank::world]))


class _Rows(torch.utils.data.Dataset):
    """Rows of several tensors, indexed by a whole batch of indices at once (no per-item collation)."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[idx] for t in self.tensors)


def loader(tensors: Sequence[torch.Tensor], indices: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
           drop_last: bool = False, pad: bool = True) -> torch.utils.data.DataLoader:
    """DataLoader over ``tensors`` (rows = frames) restricted to ``indices``; batches: :class:`EpochBatchSampler`."""
    s = EpochBatchSampler(indices, batch_size, shuffle, seed, drop_last, pad)
    return torch.utils.data.DataLoader(_Rows(tensors), sampler=s, batch_size=None, num_workers=0)
