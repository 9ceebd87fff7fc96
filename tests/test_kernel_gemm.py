"""The kernel product written as dense GEMMs: equal to the explicit-difference form, guarded distances,
memory linear in the number of training points."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield import load_dataset
from forcefield.kernel.descriptor import jacobian_apply, jacobian_t_apply
from forcefield.kernel.kernel import SQRT5, HessianKernel, TrainingSet, sq_distances

DATA = Path(__file__).parent / "data"
METHYL = np.array([np.arange(9), [0, 1, 2, 4, 5, 3, 6, 7, 8], [0, 1, 2, 5, 3, 4, 6, 7, 8]])


def _reference_matvec(tr: TrainingSet, sigma: float, beta: torch.Tensor, lam: float) -> torch.Tensor:
    """(K + λ) β from the kernel's definition with explicit differences u = d_a - P_p d_b (no GEMM expansion)."""
    w = jacobian_apply(beta, tr.diff, tr.d3)  # (M, D)
    dp, wp = tr.d[:, tr.q], w[:, tr.q]  # (M, P, D)
    y = torch.zeros_like(tr.d)
    for a in range(tr.n):
        u = tr.d[a][None, None] - dp  # (M, P, D)
        r = SQRT5 * torch.linalg.vector_norm(u, dim=-1)
        base = torch.exp(-r / sigma) * (5.0 / (3.0 * sigma ** 3))
        uw = (u * wp).sum(-1)
        y[a] = ((base * (r + sigma))[..., None] * wp - (5.0 / sigma * base * uw)[..., None] * u).sum((0, 1))
    return jacobian_t_apply(y, tr.diff, tr.d3) + lam * beta


@pytest.fixture(scope="module")
def ethanol_train():
    ds = load_dataset(DATA / "ethanol_xtb.npz")
    R = ds.R[:16].copy()
    R[5] = R[4] + 1e-7 * np.random.default_rng(0).normal(size=R[4].shape)  # a near-duplicate geometry
    return TrainingSet.from_positions(torch.as_tensor(R), METHYL)


@pytest.mark.parametrize("cache", [True, False])
def test_gemm_product_equals_reference_form(ethanol_train, cache):
    tr = ethanol_train
    kern = HessianKernel(tr, 10.0, cache_bytes=1e9 if cache else 0.0)
    beta = torch.randn(tr.n, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = kern.matvec(beta, 1e-10)
    ref = _reference_matvec(tr, 10.0, beta, 1e-10)
    assert float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref)) < 1e-10
    # the explicit blocks (GEMM-expanded distances) agree with the reference as well
    K = kern.dense()
    dense = (K @ beta.reshape(-1)).reshape(beta.shape) + 1e-10 * beta
    assert float(torch.linalg.vector_norm(dense - ref) / torch.linalg.vector_norm(ref)) < 1e-10


def test_guarded_distances_near_duplicates():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 300, dtype=torch.float64, generator=g) + 0.5
    y = torch.cat([x[:10] + 1e-7 * torch.randn(10, 300, dtype=torch.float64, generator=g),
                   torch.rand(20, 300, dtype=torch.float64, generator=g)])
    exact = ((x[:, None] - y[None]) ** 2).sum(-1)
    got = sq_distances(x, y)
    rel = (got - exact).abs() / exact
    assert float(rel.max()) < 1e-9  # every entry, the near-duplicates (r² ~ 3e-12 against |x|² ~ 300) included
    plain = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
    assert float(((plain - exact).abs() / exact).max()) > 1e-3  # the unguarded expansion loses them


_PEAK = r"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from forcefield.kernel.kernel import HessianKernel, TrainingSet
M = int(sys.argv[1])
rng = np.random.default_rng(0)
R0 = rng.normal(size=(9, 3)) * 1.2
R = R0[None] + 0.08 * rng.normal(size=(M, 9, 3))
perms = np.array([np.arange(9), [0, 1, 2, 4, 5, 3, 6, 7, 8], [0, 1, 2, 5, 3, 4, 6, 7, 8]])
kern = HessianKernel(TrainingSet.from_positions(torch.as_tensor(R), perms), 10.0, block_size=64, cache_bytes=0.0)
v = torch.randn(M, 9, 3, dtype=torch.float64)
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')  # reset the high-water mark
out = kern.matvec(v, 1e-10)
print(json.dumps({'peak': status('VmHWM') - base}))
"""


def _peak_bytes(M: int) -> int:
    p = subprocess.run([sys.executable, "-c", _PEAK, str(M)], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent)
    if p.returncode != 0:
        pytest.skip(f"cannot measure the memory high-water mark here: {p.stderr[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["peak"]


def test_product_memory_grows_linearly():
    """Peak extra memory of one product (profile recomputed in blocks of 64 rows) at M and 3M training
    points: linear growth (plus fixed buffers) stays within a few times, while a stored M x MP kernel
    profile (16 M² P bytes) would add ~250 MB, nine times its size at M."""
    # ~28 and ~75 MB on one machine, ~13 and ~60 MB on another (GEMM work buffers included); single
    # high-water marks jitter by tens of MB, so each size is the median of three runs
    small = float(np.median([_peak_bytes(800) for _ in range(3)]))
    large = float(np.median([_peak_bytes(2400) for _ in range(3)]))
    assert large < 6 * small + 8e6
    assert large - small < 0.3 * 16 * (2400 * 7200 - 800 * 2400)
