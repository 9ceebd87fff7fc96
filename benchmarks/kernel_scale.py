"""The kernel force field at MD22-class sizes: arithmetic rate of the product, training time, memory, accuracy.

For one of the sets made by ``kernel_make_md22.py`` (or the aspirin set of ``kernel_make_aspirin.py``):

1. the machine's float64 GEMM rate (``torch.mm`` of two 2,048 x 2,048 matrices, best of 3);
2. the matrix-free kernel product (one PCG iteration's K·v) at each training size: its dense-product
   arithmetic, 8·M·(M·S)·D flop when the kernel profile is recomputed in blocks (distances, x·w, A·w and c·d
   GEMMs) or 6·M·(M·S)·D with the profile stored, timed (best of 3) and given as GFLOP/s and as a share of
   the GEMM rate;
3. training (a fresh subprocess per run, so that its peak resident memory is its own): wall time, the
   preconditioner's share, PCG iterations, peak memory, force MAE on held-out frames.

Split: the last 15 % of the (single, correlated) trajectory is the test block (``forcefield.splits.block_split``);
training points are drawn energy-stratified from the rest. Timings on the shared 2-core machine depend on its
load: the load average is printed with them.

    python benchmarks/kernel_scale.py [--molecule ac-ala3-nhme] [--sizes 1000] [--threads 2] [--perms auto]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load(name: str, frames: int | None = None, data: str | None = None):
    if data:
        from forcefield import load_dataset

        ds = load_dataset(data)
        return ds[:frames] if frames else ds
    sys.path.insert(0, str(HERE))
    if name == "aspirin":
        from kernel_make_aspirin import make_aspirin

        return make_aspirin(ROOT / "bench_out" / "aspirin_xtb_500K.npz", progress=False)
    from kernel_make_md22 import make_md22

    return make_md22(name, n_frames=frames, progress=False)


def split(ds, M: int, seed: int = 1, test_fraction: float = 0.15):
    from forcefield.kernel.model import stratified_split
    from forcefield.splits import block_split

    pool, test = block_split(len(ds), test_fraction)
    if M >= len(pool):
        return pool, test
    sub, _ = stratified_split(ds.E[pool], M, 0, seed=seed)
    return pool[sub], test


def perms_for(a, ds, tr):
    from forcefield.kernel.symmetry import detect_permutations

    if a.perms == "none":
        return None
    return detect_permutations(ds.R[tr], ds.z, max_size=a.max_perms)


def gemm_rate(threads: int, n: int = 2048) -> float:
    """float64 GFLOP/s of torch.mm (n x n times n x n), best of 3."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, n, dtype=torch.float64, generator=g)
    B = torch.randn(n, n, dtype=torch.float64, generator=g)
    A @ B
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        A @ B
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def product_rate(a, ds, M: int, cache: bool) -> dict:
    """Time (best of 3) and GFLOP/s of one kernel product (K + λ) v at M training points."""
    import torch

    from forcefield.kernel.kernel import HessianKernel, TrainingSet

    torch.set_num_threads(a.threads)
    tr, _ = split(ds, M)
    perms = perms_for(a, ds, tr)
    perms = np.arange(ds.n_atoms)[None] if perms is None else perms
    train = TrainingSet.from_positions(torch.as_tensor(ds.R[tr]), perms)
    kern = HessianKernel(train, a.sigma, cache_bytes=(a.cache_gb * 2 ** 30) if cache else 0.0)
    v = torch.randn(len(tr) * 3 * ds.n_atoms, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kern.matvec(v, 1e-10)  # builds the profile cache when it is used
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        kern.matvec(v, 1e-10)
        best = min(best, time.perf_counter() - t)
    S, D = len(perms), train.d.shape[1]
    cached = kern._cache is not None
    flop = (6 if cached else 8) * len(tr) * len(tr) * S * D
    return {"M": len(tr), "S": S, "D": D, "cached": cached, "seconds": best, "gflop": flop / 1e9,
            "gflops": flop / best / 1e9}


def worker(a) -> None:
    """One training run in this process; prints a JSON line."""
    import resource

    import torch

    from forcefield import KernelForceField

    torch.set_num_threads(a.threads)
    ds = load(a.molecule, a.frames, a.data)
    tr, test = split(ds, a.worker)
    perms = perms_for(a, ds, tr)
    ff = KernelForceField(sigma=a.sigma, lam=a.lam, preconditioner=a.preconditioner, rank_per_point=a.rank_per_point,
                          perms=perms, rtol=a.rtol, cache_gb=a.cache_gb,
                          max_memory_gb=a.max_memory_gb, checkpoint=a.checkpoint, progress=a.progress,
                          maxiter=a.maxiter)
    t0 = time.perf_counter()
    ff.fit(ds.R[tr], ds.z, F=ds.F[tr], E=ds.E[tr])
    out = {"n_train": int(len(tr)), "train_s": time.perf_counter() - t0, "n_perms": int(len(ff.perms))}
    out.update({k: v for k, v in ff.info.items() if isinstance(v, (int, float, str))})
    E, F = ff.predict(ds.R[test])
    out["force_mae"] = float(np.abs(F - ds.F[test]).mean())
    out["energy_mae"] = float(np.abs(E - ds.E[test]).mean())
    out["n_test"] = int(len(test))
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(a, M: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(M), "--molecule", a.molecule, "--sigma", str(a.sigma),
           "--lam", str(a.lam), "--preconditioner", a.preconditioner,
           *(["--rank-per-point", str(a.rank_per_point)] if a.rank_per_point else []),
           "--frames", str(a.frames or 0), *(["--data", a.data] if a.data else []),
           "--threads", str(a.threads), "--rtol", str(a.rtol), "--perms", a.perms, "--max-perms", str(a.max_perms),
           "--cache-gb", str(a.cache_gb), "--max-memory-gb", str(a.max_memory_gb)]
    if a.checkpoint:
        cmd += ["--checkpoint", a.checkpoint]
    if a.progress:
        cmd += ["--progress"]
    cmd += ["--maxiter", str(a.maxiter)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if a.progress else subprocess.PIPE, text=True,
                       env=env, cwd=ROOT)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"training at {M} points failed:\n{(p.stderr or '')[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecule", default="ac-ala3-nhme", help="ac-ala3-nhme, dha, ac-ala13-nhme or aspirin")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000])
    ap.add_argument("--data", default=None, help="a dataset file to use instead of the molecule's cached set")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames of the set to use (default: the set's default size; more extends the cached set)")
    ap.add_argument("--sigma", type=float, default=50.0)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=1e-10, help="regulariser λ of (K + λ I) (sgdml's default 1e-10)")
    ap.add_argument("--preconditioner", choices=["auto", "schur", "lean", "woodbury"], default="auto")
    ap.add_argument("--rank-per-point", type=int, default=None, help="Woodbury: directions kept per inducing point")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--perms", choices=["auto", "none"], default="auto")
    ap.add_argument("--max-perms", type=int, default=100, help="largest detected group kept (max_size)")
    ap.add_argument("--cache-gb", type=float, default=1.0)
    ap.add_argument("--max-memory-gb", type=float, default=4.0)
    ap.add_argument("--checkpoint", default=None, help="PCG checkpoint file (a killed run resumes from it)")
    ap.add_argument("--no-train", action="store_true", help="only the GEMM and product rates")
    ap.add_argument("--progress", action="store_true", help="show the training's PCG progress (residual) on stderr")
    ap.add_argument("--maxiter", type=int, default=3000,
                    help="PCG iterations at most, those before a resume included (default: %(default)s)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        worker(a)
        return
    import torch

    ds = load(a.molecule, a.frames, a.data)
    load0 = os.getloadavg()
    print(f"{a.molecule}: {len(ds)} frames x {ds.n_atoms} atoms; sigma {a.sigma:g}; {a.threads} torch threads; "
          f"load average {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} on {os.cpu_count()} cores", flush=True)
    res = {"molecule": a.molecule, "load_start": load0, "products": [], "training": []}
    g = gemm_rate(a.threads)
    res["gemm_gflops"] = g
    print(f"float64 GEMM (torch.mm 2048^3, {a.threads} threads): {g:.1f} GFLOP/s", flush=True)
    torch.set_num_threads(a.threads)
    for M in a.sizes:
        for cache in (True, False):
            r = product_rate(a, ds, M, cache)
            r["share_of_gemm"] = r["gflops"] / g
            res["products"].append(r)
            print(f"product M={r['M']} S={r['S']} D={r['D']} {'stored' if r['cached'] else 'recomputed'} profile: "
                  f"{r['seconds']:.3f} s, {r['gflop']:.1f} GFLOP, {r['gflops']:.1f} GFLOP/s = "
                  f"{100 * r['share_of_gemm']:.0f} % of GEMM", flush=True)
    if not a.no_train:
        for M in a.sizes:
            r = run_worker(a, M)
            res["training"].append(r)
            print(f"train M={M}: {json.dumps(r)}", flush=True)
    load1 = os.getloadavg()
    res["load_end"] = load1
    print()
    print(f"| M | S | product s | GFLOP/s | % of GEMM ({g:.0f} GFLOP/s) | profile |")
    print("|---|---|---|---|---|---|")
    for r in res["products"]:
        print(f"| {r['M']} | {r['S']} | {r['seconds']:.3f} | {r['gflops']:.1f} | {100 * r['share_of_gemm']:.0f} | "
              f"{'stored' if r['cached'] else 'recomputed'} |")
    if res["training"]:
        print()
        print("| M | S | train s | precond s | PCG it. | s/it. | peak GiB | force MAE | energy MAE | test |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in res["training"]:
            it = r.get("cg_iterations")
            pcg_s = r["train_s"] - r.get("precond_s", 0.0)
            per = f"{pcg_s / it:.2f}" if it else "n/a"
            print(f"| {r['n_train']} | {r['n_perms']} | {r['train_s']:.1f} | {r.get('precond_s', 0.0):.1f} | "
                  f"{it if it is not None else r['solver']} | {per} | {r['peak_rss_gib']:.2f} | {r['force_mae']:.3f} | "
                  f"{r['energy_mae']:.3f} | {r['n_test']} |")
    print(f"\nLoad average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, at end "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} on {os.cpu_count()} cores.")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
