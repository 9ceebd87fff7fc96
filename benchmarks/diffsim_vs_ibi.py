"""DiffSim vs Iterative Boltzmann Inversion: learning LJ pair potentials from RDFs (reduced LJ units).

Anchor: Wang et al., "Learning pair potentials using differentiable simulations", JCP 158, 044113 (2023)
(DiffSim; LJ recovery: train at rho=0.3, T=1.2; validate at rho=0.5, 0.7) and VOTCA's IBI.

1. Targets: smoothed g(r) simulated with the true LJ potential (smoothly switched off 2.2-2.5 sigma).
2. LJ recovery: DiffSim (neural pair potential + LJ prior, both started from the Boltzmann-inverted
   guess that also starts IBI) and IBI trained on rho=0.3, T=1.2; every learnt potential is then
   simulated afresh at rho=0.3, 0.5, 0.7 (T=1.2). Reports g(r) MAE per state, the well position and
   depth, and the mean |u - u_LJ| on [0.95, 2.5].
3. Two temperatures at once (rho=0.3, T=1.2 and T=2.0): DiffSim fitted jointly, against single-state
   IBI tables (each fitted at one temperature, run at both) and multistate IBI.
4. Wall time per DiffSim optimisation step and per IBI iteration (CPU unless --device).

Usage: python benchmarks/diffsim_vs_ibi.py [--quick] [--json FILE] [--plots DIR] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cg.diffsim.ensemble import State, sample_rdf  # noqa: E402
from cg.diffsim.fit import DiffSimFitter, lj_guess_from_rdf  # noqa: E402
from cg.diffsim.ibi import ibi  # noqa: E402
from cg.diffsim.observables import RDF  # noqa: E402
from cg.diffsim.potentials import (LennardJones, NeuralPairPotential, TabulatedPotential,  # noqa: E402
                                   potential_error)

CONFIGS = {
    # n: particles per state; replicas for targets/evaluation; DiffSim steps/tau/replicas; IBI iterations/steps
    "quick": dict(n_train=128, n_val={0.5: 128, 0.7: 256}, target_equil=300, target_prod=2000, target_reps=2,
                  eval_equil=300, eval_prod=1500, eval_reps=1, ds_steps=50, ds_tau=100, ds_reps=2,
                  ibi_iter=10, ibi_equil=200, ibi_prod=800, ibi_reps=2, mt_ds_steps=40, mt_ibi_iter=6),
    "full": dict(n_train=128, n_val={0.5: 128, 0.7: 256}, target_equil=500, target_prod=8000, target_reps=4,
                 eval_equil=500, eval_prod=4000, eval_reps=4, ds_steps=150, ds_tau=100, ds_reps=3,
                 ibi_iter=20, ibi_equil=300, ibi_prod=2000, ibi_reps=3, mt_ds_steps=100, mt_ibi_iter=15),
}
T_TRAIN, RHO_TRAIN, RHO_VAL, T_MULTI = 1.2, 0.3, (0.5, 0.7), (1.2, 2.0)


def mae(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced version (a few minutes on 2 cores)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--plots", default=None, help="folder for g(r) and u(r) PNGs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-multi", action="store_true", help="skip the two-temperature experiment")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    c = CONFIGS["quick" if a.quick else "full"]
    dev = a.device
    t_start, cpu_start = time.perf_counter(), time.process_time()
    rdf = RDF(2.5, 100)
    true = LennardJones(learnable=False)
    true_tab = true.table(create_graph=False)
    n_of = {RHO_TRAIN: c["n_train"], **c["n_val"]}

    # ---- targets -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    tgt_states = [State(rho, T_TRAIN, n_particles=n_of[rho], replicas=c["target_reps"]) for rho in (RHO_TRAIN, *RHO_VAL)]
    if not a.skip_multi:
        tgt_states.append(State(RHO_TRAIN, T_MULTI[1], n_particles=c["n_train"], replicas=c["target_reps"]))
    G = sample_rdf(true_tab, tgt_states, rdf, c["target_equil"], c["target_prod"], seed=a.seed + 1, device=dev)
    target = {s.name: G[i] for i, s in enumerate(tgt_states)}
    print(f"targets: {len(tgt_states)} states in {time.perf_counter() - t0:.1f} s", flush=True)

    def st(rho, T, reps, weight=1.0):
        name = f"rho{rho:g}_T{T:g}"
        return State(rho, T, target=target[name], weight=weight, n_particles=n_of[rho], replicas=reps)

    def evaluate(pot, states, seed):
        g = sample_rdf(pot.table(create_graph=False, device=dev), states, rdf, c["eval_equil"], c["eval_prod"],
                       seed=seed, device=dev)
        return {s.name: g[i] for i, s in enumerate(states)}

    eval_states = [st(rho, T_TRAIN, c["eval_reps"]) for rho in (RHO_TRAIN, *RHO_VAL)]
    train = [st(RHO_TRAIN, T_TRAIN, c["ds_reps"])]

    # ---- DiffSim at rho=0.3, T=1.2 -------------------------------------------------------------
    eps0, sig0 = lj_guess_from_rdf(rdf.r, target[train[0].name], T_TRAIN)
    torch.manual_seed(a.seed)
    pot = NeuralPairPotential(prior="lj", epsilon=eps0, sigma=sig0)
    t0 = time.perf_counter()
    fitter = DiffSimFitter(pot, train, rdf, tau=c["ds_tau"], lr=0.02, lr_decay=0.1 ** (1 / c["ds_steps"]),
                           residual_momentum=0.5, net_lr_scale=0.1, seed=a.seed + 2, device=dev)
    fitter.fit(c["ds_steps"], progress=False)
    t_ds = time.perf_counter() - t0
    step_s = DiffSimFitter.step_time(fitter.history)
    print(f"DiffSim: {c['ds_steps']} steps in {t_ds:.1f} s ({step_s:.3f} s/step, tau={c['ds_tau']}, "
          f"{c['ds_reps']} replicas x {c['n_train']} particles)", flush=True)

    # ---- IBI at rho=0.3, T=1.2 -----------------------------------------------------------------
    t0 = time.perf_counter()
    ibi_train = [st(RHO_TRAIN, T_TRAIN, c["ibi_reps"])]
    res = ibi(ibi_train, rdf, n_iter=c["ibi_iter"], equil_steps=c["ibi_equil"], prod_steps=c["ibi_prod"],
              seed=a.seed + 3, device=dev, progress=False)
    t_ibi = time.perf_counter() - t0
    print(f"IBI: {c['ibi_iter']} iterations in {t_ibi:.1f} s", flush=True)
    # IBI with its noise damped like DiffSim's weight averaging: mean of the tables of the last half
    ibi_avg = TabulatedPotential(res.r, np.mean(res.tables[-(c["ibi_iter"] // 2):], axis=0),
                                 r_table_min=float(res.r[0]))

    # ---- evaluation ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    g_ds = evaluate(pot, eval_states, a.seed + 10)
    g_ibi = evaluate(res.potential, eval_states, a.seed + 10)
    g_ibi_avg = evaluate(ibi_avg, eval_states, a.seed + 10)
    g_pmf = evaluate(NeuralPairPotential(prior="lj", epsilon=eps0, sigma=sig0), eval_states[:1], a.seed + 10)
    g_true = evaluate(true, eval_states, a.seed + 10)  # noise floor: the true potential, re-simulated
    print(f"evaluation in {time.perf_counter() - t0:.1f} s", flush=True)
    out = {
        "config": "quick" if a.quick else "full",
        "rdf_mae_diffsim": {k: mae(g_ds[k], target[k]) for k in g_ds},
        "rdf_mae_ibi": {k: mae(g_ibi[k], target[k]) for k in g_ibi},
        "rdf_mae_ibi_averaged": {k: mae(g_ibi_avg[k], target[k]) for k in g_ibi_avg},
        "rdf_mae_initial_guess": {k: mae(g_pmf[k], target[k]) for k in g_pmf},
        "rdf_mae_true_potential": {k: mae(g_true[k], target[k]) for k in g_true},
        "potential_diffsim": potential_error(pot, true),
        "potential_ibi": potential_error(res.potential, true),
        "potential_ibi_averaged": potential_error(ibi_avg, true),
        "potential_true": {"r_min": 2 ** (1 / 6), "u_min": -1.0},
        "initial_guess": {"epsilon": eps0, "sigma": sig0},
        "diffsim_step_s": step_s, "diffsim_fit_s": t_ds, "diffsim_md_steps": c["ds_steps"] * c["ds_tau"],
        "ibi_iteration_s": t_ibi / c["ibi_iter"], "ibi_fit_s": t_ibi,
        "ibi_md_steps": c["ibi_iter"] * (c["ibi_equil"] + c["ibi_prod"]),
        "ibi_history": res.history, "diffsim_final_window_loss": fitter.history[-1]["loss"],
        "device": str(dev), "threads": a.threads,
    }

    # ---- two temperatures at once --------------------------------------------------------------
    if not a.skip_multi:
        t0 = time.perf_counter()
        mt = [st(RHO_TRAIN, T, c["ds_reps"]) for T in T_MULTI]
        torch.manual_seed(a.seed)
        pot_mt = NeuralPairPotential(prior="lj", epsilon=eps0, sigma=sig0)
        f_mt = DiffSimFitter(pot_mt, mt, rdf, tau=c["ds_tau"], lr=0.02, lr_decay=0.1 ** (1 / c["mt_ds_steps"]),
                             residual_momentum=0.5, net_lr_scale=0.1, seed=a.seed + 4, device=dev)
        f_mt.fit(c["mt_ds_steps"], progress=False)
        hot = [st(RHO_TRAIN, T_MULTI[1], c["ibi_reps"])]
        res_hot = ibi(hot, rdf, n_iter=c["mt_ibi_iter"], equil_steps=c["ibi_equil"], prod_steps=c["ibi_prod"],
                      seed=a.seed + 5, device=dev, progress=False)
        both = [st(RHO_TRAIN, T, c["ibi_reps"]) for T in T_MULTI]
        res_ms = ibi(both, rdf, n_iter=c["mt_ibi_iter"], equil_steps=c["ibi_equil"], prod_steps=c["ibi_prod"],
                     seed=a.seed + 6, device=dev, progress=False)
        ev = [st(RHO_TRAIN, T, c["eval_reps"]) for T in T_MULTI]
        models = {"true_LJ": true, "diffsim_joint": pot_mt, "ibi_T1.2": res.potential, "ibi_T2": res_hot.potential,
                  "ibi_multistate": res_ms.potential,
                "ibi_multistate_avg": TabulatedPotential(res_ms.r, np.mean(res_ms.tables[-(c["mt_ibi_iter"] // 2):],
                                                                           axis=0), r_table_min=float(res_ms.r[0]))}
        gm = {k: evaluate(p, ev, a.seed + 11) for k, p in models.items()}
        out["multi_temperature"] = {k: {s: mae(g[s], target[s]) for s in g} for k, g in gm.items()}
        out["multi_temperature_potential"] = {k: potential_error(p, true) for k, p in models.items()}
        out["multi_temperature_s"] = time.perf_counter() - t0
        print(f"two-temperature experiment in {out['multi_temperature_s']:.1f} s", flush=True)
    out["total_s"] = time.perf_counter() - t_start
    out["total_cpu_s"] = time.process_time() - cpu_start

    # ---- report --------------------------------------------------------------------------------
    print(f"\nLJ recovery, trained at rho={RHO_TRAIN}, T={T_TRAIN} ({out['config']}); g(r) MAE over r in [0, 2.5]")
    print(f"{'state':<14}{'DiffSim':>10}{'IBI':>10}{'IBI avg':>10}{'true LJ':>10}  "
          f"(IBI avg: mean of the last half of the tables; true LJ re-simulated = noise floor)")
    for k in out["rdf_mae_diffsim"]:
        tag = " (train)" if k == train[0].name else " (validation)"
        print(f"{k:<14}{out['rdf_mae_diffsim'][k]:>10.4f}{out['rdf_mae_ibi'][k]:>10.4f}"
              f"{out['rdf_mae_ibi_averaged'][k]:>10.4f}{out['rdf_mae_true_potential'][k]:>10.4f}{tag}")
    print(f"initial guess (Boltzmann-inverted LJ) at train state: {out['rdf_mae_initial_guess'][train[0].name]:.4f}")
    print(f"\n{'potential':<12}{'r_min':>8}{'u_min':>8}{'|u-u_LJ|':>10}   (true: r_min 1.1225, u_min -1)")
    for k in ("diffsim", "ibi", "ibi_averaged"):
        p = out[f"potential_{k}"]
        print(f"{k:<12}{p['r_min']:>8.4f}{p['u_min']:>8.4f}{p['u_mae']:>10.4f}")
    print(f"\nwall time: DiffSim {step_s:.3f} s per optimisation step ({c['ds_tau']} MD steps with backprop), "
          f"IBI {out['ibi_iteration_s']:.2f} s per iteration ({c['ibi_equil'] + c['ibi_prod']} MD steps); "
          f"MD steps DiffSim {out['diffsim_md_steps']} vs IBI {out['ibi_md_steps']} (x replicas)")
    if "multi_temperature" in out:
        print("\nTwo temperatures at rho=0.3 (g(r) MAE):")
        names = list(next(iter(out["multi_temperature"].values())))
        print(f"{'model':<20}" + "".join(f"{n:>14}" for n in names) + f"{'u_min':>8}{'r_min':>8}")
        for k, v in out["multi_temperature"].items():
            p = out["multi_temperature_potential"][k]
            print(f"{k:<20}" + "".join(f"{v[n]:>14.4f}" for n in names) + f"{p['u_min']:>8.3f}{p['r_min']:>8.3f}")
    print(f"\ntotal {out['total_s']:.0f} s wall, {out['total_cpu_s']:.0f} s CPU (threads={a.threads})")
    if a.json:
        from forcefield.fileio import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))
    if a.plots:
        from cg.diffsim.plots import plot_potentials, plot_rdfs

        d = Path(a.plots)
        plot_rdfs(d / "lj_recovery_rdf.png", rdf.r,
                  {k: {"target": target[k], "DiffSim": g_ds[k], "IBI": g_ibi[k], "IBI avg": g_ibi_avg[k]}
                   for k in g_ds},
                  title="LJ recovery (trained at rho=0.3, T=1.2)")
        r = np.linspace(0.85, 2.5, 400)
        plot_potentials(d / "lj_recovery_u.png", r, {"true": true.evaluate(r)[0], "DiffSim": pot.evaluate(r)[0],
                                                      "IBI": res.potential.evaluate(r)[0],
                                                      "IBI avg": ibi_avg.evaluate(r)[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
