"""Shared test helper: autograd gradients of a scalar loss against central finite differences."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def assert_grads_match_fd(loss_of: Callable, base: Sequence[torch.Tensor], grads: Sequence[float],
                          h: float = 1e-5, atol: float = 1e-4, rtol: float = 1e-3) -> None:
    """``loss_of(*params)[0]`` is the loss; ``grads`` its autograd gradients at ``base``, one per parameter."""
    assert any(abs(g) > 1e-3 for g in grads)
    for k in range(len(base)):
        plus, minus = list(base), list(base)
        plus[k] = plus[k] + h
        minus[k] = minus[k] - h
        with torch.no_grad():
            fd = (float(loss_of(*plus)[0]) - float(loss_of(*minus)[0])) / (2 * h)
        assert abs(fd - grads[k]) < atol + rtol * abs(fd), (k, fd, grads[k])
