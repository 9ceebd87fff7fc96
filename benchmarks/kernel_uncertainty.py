"""Calibration of the kernel force field's posterior force std, in and out of its training domain.

Two molecules, GFN2-xTB labels (cached under ``bench_out/``):

* alanine dipeptide (data/alanine-dipeptide.pdb): OpenMM amber14 vacuum MD at 300 K; training frames from
  the first part of the run, held-out frames from its last part (contiguous blocks); out-of-domain frames
  from an 800 K run, those with φ > 0 (a region the 300 K run does not visit).
* aspirin: the 500 K xTB MD of benchmarks/kernel_make_aspirin.py (first part trains, last part held out);
  out-of-domain frames from xTB MD at 1,000 K.

σ is fixed (alanine 40, aspirin 50) or chosen from ``--sigma`` values on the validation split (a fifth of
the training frames, energy-stratified; fitted models are cached). Figures per
set: Spearman ρ per frame between the predicted RMS std and the true RMS force error, and
RMS(true error) / RMS(predicted std), for two scales: the GP's maximum-likelihood amplitude from the
training data (the default) and a factor fitted on the validation split. Targets: ρ ≥ 0.6, ratio in [0.5, 2].
"ideal" is the ρ an exact std would reach on the same frames (errors drawn from the predicted std; per-frame
errors fluctuate even when their std is known), a ceiling for the measured ρ. "cost" is the time of
``predict(return_std=True)`` over a plain ``predict`` (best of three).

    python benchmarks/kernel_uncertainty.py [--molecules alanine aspirin] [--n-train 200]
        [--std-method separable|posterior] [--rank R]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("bench_out")
PHI = [4, 6, 8, 14]  # C(ACE)-N-CA-C of alanine dipeptide (0-based atoms of data/alanine-dipeptide.pdb)


def _cached(path: Path, make):
    from forcefield import load_dataset

    if path.exists():
        return load_dataset(path)
    ds = make()
    ds.save(path)
    return ds


def alanine_sets(n_train: int, n_test: int, n_ood: int, progress: bool):
    """(train, held-out, out-of-domain) GFN2-xTB-labelled alanine-dipeptide datasets."""
    from forcefield.geometry import dihedrals
    from forcefield.reference import label_dataset, run_openmm_md

    pdb = Path(__file__).resolve().parents[1] / "data" / "alanine-dipeptide.pdb"
    md = _cached(OUT / "unc_ala_300K.npz", lambda: run_openmm_md(pdb, n_frames=1000, save_every=250,
                                                                 temperature=300.0, seed=3, progress=progress))
    hot = _cached(OUT / "unc_ala_800K.npz", lambda: run_openmm_md(pdb, n_frames=1000, save_every=250,
                                                                  temperature=800.0, seed=4, progress=progress))
    n_pool = int(0.7 * len(md))  # contiguous blocks: the first 70 % trains, the last 30 % is held out
    tr_idx = np.linspace(0, n_pool - 1, n_train).round().astype(int)
    te_idx = np.linspace(n_pool, len(md) - 1, n_test).round().astype(int)
    phi = np.degrees(dihedrals(hot.R, np.array([PHI]))[:, 0])
    pos = np.nonzero(phi > 0)[0]
    if len(pos) < n_ood:
        raise RuntimeError(f"only {len(pos)} frames with phi > 0 in the 800 K run")
    ood_idx = pos[np.linspace(0, len(pos) - 1, n_ood).round().astype(int)]
    lab = {}
    for name, ds, idx in (("train", md, tr_idx), ("test", md, te_idx), ("ood", hot, ood_idx)):
        lab[name] = _cached(OUT / f"unc_ala_{name}_{len(idx)}.npz", lambda ds=ds, idx=idx: label_dataset(
            ds[idx], progress=progress))
    return lab["train"], lab["test"], lab["ood"]


def aspirin_sets(n_train: int, n_test: int, n_ood: int, progress: bool):
    """(train, held-out, out-of-domain) GFN2-xTB aspirin datasets."""
    sys.path.insert(0, str(Path(__file__).parent))
    from kernel_make_aspirin import aspirin_geometry, make_aspirin

    from forcefield.reference import xtb_md

    ds = make_aspirin(n_frames=2000, progress=progress)
    n_pool = int(0.6 * len(ds))
    tr_idx = np.linspace(0, n_pool - 1, n_train).round().astype(int)
    te_idx = np.linspace(n_pool, len(ds) - 1, n_test).round().astype(int)
    R0, z = aspirin_geometry()

    def hot_md():
        return xtb_md(R0, z, n_frames=n_ood, save_every=20, dt_fs=0.5, temperature=1000.0, seed=5, name="aspirin",
                      progress=progress)

    ood = _cached(OUT / f"unc_aspirin_1000K_{n_ood}.npz", hot_md)
    return ds[tr_idx], ds[te_idx], ood


def evaluate(name: str, train, test, ood, sigmas, rank: int | None, method: str = "separable", seed: int = 0
             ) -> list[dict]:
    from forcefield import KernelForceField
    from forcefield.kernel.model import stratified_split
    from forcefield.kernel.uncertainty import calibrate_std, calibration_figures, posterior

    n_valid = max(1, len(train) // 5)
    tr, va = stratified_split(train.E, len(train) - n_valid, n_valid, seed=seed)
    cache = OUT / f"unc_{name}_model_{len(tr)}_{'-'.join(f'{s:g}' for s in sigmas)}.npz"
    t0 = time.perf_counter()
    if cache.exists():
        ff = KernelForceField.load(cache)
    else:
        ff = KernelForceField(sigma=sigmas if len(sigmas) > 1 else sigmas[0], cholesky_max=16000)
        ff.fit(train.R[tr], train.z, F=train.F[tr], E=train.E[tr], valid=(train.R[va], train.F[va]))
        ff.save(cache)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ff.std_method = method
    post = posterior(ff, **({"rank": rank} if rank and method == "posterior" else {}))
    t_post = time.perf_counter() - t0
    rows = []
    for scale in ("ml", "validation"):
        if scale == "validation":
            calibrate_std(ff, train.R[va], train.F[va])
        for split, ds in (("held-out", test), ("out-of-domain", ood)):
            t_pred, t_std = [], []  # best of three: the sets are small, single timings are noisy
            for _ in range(3):
                t0 = time.perf_counter()
                _, F = ff.predict(ds.R)
                t_pred.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, F2, S = ff.predict(ds.R, return_std=True)
                t_std.append(time.perf_counter() - t0)
            t_pred, t_std = min(t_pred), min(t_std)
            assert np.array_equal(F, F2)
            fig = calibration_figures(S, F, ds.F)
            fig.update(molecule=name, split=split, scale=scale, sigma=float(ff.sigma_), n_train=len(tr),
                       rank=post.rank, exact=post.exact, n_unknowns=post.n_eff, fit_s=t_fit, method=method,
                       posterior_build_s=t_post, cost_ratio=t_std / t_pred)
            rows.append(fig)
    return rows


def alanine_active(n_train: int, rounds: int, md_steps: int, temperature: float, progress: bool) -> list[dict]:
    """Active learning (GFN2-xTB labels) from the cached alanine model; resumable in bench_out/unc_ala_active_<T>K."""
    from forcefield import KernelForceField
    from forcefield.kernel.active import ActiveConfig, active_learn, plot_rounds
    from forcefield.kernel.model import stratified_split

    train, test, _ = alanine_sets(n_train, 150, 100, progress)
    n_valid = max(1, len(train) // 5)
    tr, _ = stratified_split(train.E, len(train) - n_valid, n_valid, seed=0)
    models = sorted(OUT.glob(f"unc_alanine_model_{len(tr)}_*.npz"))
    if not models:
        raise RuntimeError("run the alanine calibration first (it fits and caches the model)")
    ff = KernelForceField.load(models[0])
    res = active_learn(ff, train[tr], test, starts=train.R[tr], config=ActiveConfig(max_rounds=rounds, md_steps=md_steps, temperature=temperature,
                                           progress=progress),
                       workdir=OUT / f"unc_ala_active_{temperature:g}K")
    plot_rounds(res.log, OUT / f"unc_ala_active_{temperature:g}K" / "active_rounds.png")
    return res.log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["alanine", "aspirin"], choices=["alanine", "aspirin"])
    ap.add_argument("--n-train", type=int, default=200, help="training frames incl. a fifth for validation")
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--n-ood", type=int, default=100)
    ap.add_argument("--sigma", type=float, nargs="+", default=None,
                    help="length scale(s); several are compared on the validation split (default: alanine 40, "
                         "aspirin 50, to keep the run short on 2 cores)")
    ap.add_argument("--std-method", default="separable", choices=["separable", "posterior"],
                    help="separable (the default std of predict) or the GP's force posterior (exact/low-rank)")
    ap.add_argument("--rank", type=int, default=None, help="--std-method posterior: rank of the low-rank posterior "
                                                          "(default: automatic)")
    ap.add_argument("--json", type=Path, default=OUT / "kernel_uncertainty.json")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--active", type=int, default=None, metavar="ROUNDS",
                    help="instead: active learning on alanine dipeptide (xTB labels) for at most ROUNDS rounds")
    ap.add_argument("--md-steps", type=int, default=500, help="active learning: MD steps per replica and round")
    ap.add_argument("--temperature", type=float, default=300.0, help="active learning: MD temperature (K)")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if a.active is not None:
        from forcefield.kernel.active import LOG_FIELDS

        log = alanine_active(a.n_train, a.active, a.md_steps, a.temperature, not a.quiet)
        print(" ".join(f"{k:>11s}" for k in LOG_FIELDS))
        for r in log:
            print(" ".join(f"{r[k]:11.4g}" if isinstance(r[k], float) else f"{r[k]:>11}" for k in LOG_FIELDS))
        return
    rows = []
    for mol in a.molecules:
        sets = (alanine_sets if mol == "alanine" else aspirin_sets)(a.n_train, a.n_test, a.n_ood, not a.quiet)
        sig = a.sigma or [40.0 if mol == "alanine" else 50.0]
        rows += evaluate(mol, *sets, sigmas=sig, rank=a.rank, method=a.std_method)
    print(f"{'molecule':9s} {'split':14s} {'scale':10s} {'frames':>6s} {'sigma':>5s} {'rank':>6s} {'MAE':>6s} "
          f"{'RMSerr':>7s} {'RMSstd':>7s} {'rho':>6s} {'ideal':>6s} {'ratio':>6s} {'cost':>5s}   (targets: rho>=0.6, ratio 0.5-2; "
          "ideal: the rho of an exact std on these frames)")
    for r in rows:
        print(f"{r['molecule']:9s} {r['split']:14s} {r['scale']:10s} {r['frames']:6d} {r['sigma']:5.0f} "
              f"{r['rank']:6d} {r['force_mae']:6.3f} {r['rms_error']:7.3f} {r['rms_std']:7.3f} {r['spearman']:6.3f} "
              f"{r['spearman_ideal']:6.3f} {r['rms_ratio']:6.3f} {r['cost_ratio']:5.2f}")
    a.json.write_text(json.dumps(rows, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
