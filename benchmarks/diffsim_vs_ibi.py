"""DiffSim vs Iterative Boltzmann Inversion: learning LJ pair potentials from RDFs (reduced LJ units).

Anchor: Wang et al., "Learning pair potentials using differentiable simulations", JCP 158, 044113 (2023)
(DiffSim; LJ recovery: train at rho=0.3, T=1.2; validate at rho=0.5, 0.7) and VOTCA's IBI.

1. Targets: smoothed g(r) simulated with the true LJ potential (smoothly switched off 2.2-2.5 sigma).
2. LJ recovery: DiffSim (neural pair potential + LJ prior, both started from the Boltzmann-inverted
   guess that also starts IBI) and IBI trained on rho=0.3, T=1.2; every learnt potential is then
   simulated afresh at rho=0.3, 0.5, 0.7 (T=1.2). Reports g(r) MAE per state, the well position and
   depth, and the mean |u - u_LJ| on [0.95, 2.5].
   Statistics: the targets are long runs split into groups of replicas (their noise, the expected
   |error| per bin of the target mean, is reported); every potential, the true one included, is
   evaluated with several independent seed groups (the same seeds, i.e. initial conditions and random
   forces, for every potential), so each figure is a mean +- standard error over seeds, the true
   potential's figure is the noise floor, and differences between methods are also given paired by seed.
   DiffSim ends with a phase of longer windows (ds_final steps of ds_final_tau MD steps): less noisy
   gradients where the parameters are averaged, which removed the too shallow well of shorter windows.
3. Two temperatures at once, with a state-dependent effective pair potential: the reference is a binary
   LJ mixture (50:50; sigma_AA=1, sigma_BB=1.3, eps_AA=1, eps_BB=0.5, AB by Lorentz-Berthelot-like
   rules) seen as ONE particle type (total g(r)); its effective pair potential is a free energy that
   changes with T. DiffSim fits a temperature-dependent u(r; T) = e(r) - T s(r) to T=1.2 and T=2.0 at
   once (and, as an ablation, one T-independent potential); against single-state IBI tables (each
   fitted at one temperature, run at all) and multistate IBI (one table for both). Validation at T=1.6.
4. Mixtures with particle types: the three LJ type-pair potentials of that mixture recovered by DiffSim
   from the partial RDFs of two compositions (x_A = 0.25 and 0.75) simulated and fitted at once.
5. Wall time per DiffSim optimisation step and per IBI iteration (CPU unless --device).

Usage: python benchmarks/diffsim_vs_ibi.py [--quick] [--json FILE] [--plots DIR] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cg.diffsim.ensemble import State, sample_all, state_name  # noqa: E402
from cg.diffsim.fit import lj_guess_from_rdf  # noqa: E402
from cg.diffsim.recipe import DiffSimConfig, fit_pair_potential  # noqa: E402
from cg.diffsim.ibi import ibi  # noqa: E402
from cg.diffsim.observables import RDF, type_pairs  # noqa: E402
from cg.diffsim.potentials import (LennardJones, NeuralPairPotential,  # noqa: E402
                                   TabulatedPotential, TypedPairPotential, potential_error)

CONFIGS = {
    # n: particles per state; target: (replicas per group, production steps) per density (one long reference run, split into
    # target_groups groups of replicas for its noise estimate); eval: (replicas per seed, steps) per density, every
    # learnt potential and the true one evaluated with eval_seeds independent seed groups (the same seeds for every
    # potential: paired differences); DiffSim steps/tau/replicas (+ a final phase of ds_final longer windows);
    # IBI iterations/steps; mt_*: two temperatures; mix_*: typed mixture recovery
    "quick": dict(n_train=128, n_val={0.5: 128, 0.7: 256}, target_equil=500,
                  target={0.3: (2, 4000), 0.5: (1, 2000), 0.7: (1, 2000)}, target_groups=4,
                  eval_equil=500, eval={0.3: (2, 1500), 0.5: (2, 1000), 0.7: (1, 1000)}, eval_seeds=3,
                  ds_steps=100, ds_tau=100, ds_reps=2, ds_final=20,
                  ds_final_tau=250, ibi_iter=10, ibi_equil=200, ibi_prod=800, ibi_reps=2, mt_ds_steps=60,
                  mt_ds_final=10, mt_ibi_iter=8, mt_target_reps=3, mt_target_prod=3000, mt_eval_reps=2,
                  mt_eval_prod=1500, mix_steps=40, mix_reps=2),
    "full": dict(n_train=128, n_val={0.5: 128, 0.7: 256}, target_equil=1000,
                 target={0.3: (4, 12000), 0.5: (2, 12000), 0.7: (1, 8000)}, target_groups=8,
                 eval_equil=500, eval={0.3: (4, 4000), 0.5: (4, 4000), 0.7: (2, 4000)}, eval_seeds=4,
                 ds_steps=150, ds_tau=100, ds_reps=3, ds_final=50,
                 ds_final_tau=300, ibi_iter=20, ibi_equil=300, ibi_prod=2000, ibi_reps=3, mt_ds_steps=120,
                 mt_ds_final=30, mt_ibi_iter=12, mt_target_reps=6, mt_target_prod=8000, mt_eval_reps=4,
                 mt_eval_prod=4000, mix_steps=100, mix_reps=2),
}
T_TRAIN, RHO_TRAIN, RHO_VAL = 1.2, 0.3, (0.5, 0.7)
T_MULTI, T_MULTI_VAL = (1.2, 2.0), 1.6
# binary mixture (type-pair (eps, sigma)) seen as one type in the two-temperature experiment
MIXTURE = {(0, 0): (1.0, 1.0), (0, 1): (0.7, 1.15), (1, 1): (0.5, 1.3)}
X_MIX = (0.5, 0.5)


def mae(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


def ibi_averaged(res, n_last: int) -> TabulatedPotential:
    """IBI with its noise damped like DiffSim's weight averaging: the mean of the last tables."""
    return TabulatedPotential(res.r, np.mean(res.tables[-max(1, n_last):], axis=0), r_table_min=float(res.r[0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced version (a few minutes on 2 cores)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--plots", default=None, help="folder for g(r) and u(r) PNGs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-multi", action="store_true", help="skip the two-temperature experiment")
    ap.add_argument("--skip-mixture", action="store_true", help="skip the typed-mixture recovery")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    c = CONFIGS["quick" if a.quick else "full"]
    dev = a.device
    t_start, cpu_start = time.perf_counter(), time.process_time()
    rdf = RDF(2.5, 100)
    true = LennardJones(learnable=False)
    n_of = {RHO_TRAIN: c["n_train"], **c["n_val"]}

    def sample(pot, states, equil, prod, seed, **kw):
        """g(r) per state name with ``pot`` (one table per state for temperature-dependent potentials)."""
        tab = pot.state_tables([s.temperature for s in states], create_graph=False, device=dev)
        out = sample_all(tab, states, rdf, equil, prod, seed=seed, device=dev, **kw)
        return {s.name: out["g"][i] for i, s in enumerate(states)}, out

    def sample_seeds(pot, states, n_groups, equil, prod, seed):
        """g(r) per state name, shape (n_groups, n_bins): every state's ``replicas`` simulated ``n_groups`` times
        as independent groups of replicas (one batched run)."""
        groups = [replace(s, name=f"{s.name}#{k}", target=None) for s in states for k in range(n_groups)]
        g, _ = sample(pot, groups, equil, prod, seed)
        return {s.name: np.stack([g[f"{s.name}#{k}"] for k in range(n_groups)]) for s in states}

    def sample_groups(pot, spec, n_groups, equil, seed, temperature=T_TRAIN):
        """:func:`sample_seeds` for the densities of ``spec`` ({rho: (replicas per group, steps)}), one run per
        step count."""
        by_prod: dict[int, list] = {}
        for rho, (reps, prod) in spec.items():
            by_prod.setdefault(int(prod), []).append(State(rho, temperature, n_particles=n_of[rho], replicas=int(reps)))
        out = {}
        for prod, states in by_prod.items():
            out.update(sample_seeds(pot, states, n_groups, equil, prod, seed))
        return out

    # ---- targets: long runs of the true potential, split into groups for their noise ---------------
    t0 = time.perf_counter()
    tg = sample_groups(true, c["target"], c["target_groups"], c["target_equil"], a.seed + 1)
    target = {k: v.mean(0) for k, v in tg.items()}
    # expected |error| per bin of the target mean (Gaussian: sqrt(2/pi) x standard error), averaged over r
    target_noise = {k: float(np.mean(np.sqrt(2 / np.pi) * v.std(0, ddof=1) / np.sqrt(len(v)))) for k, v in tg.items()}
    print(f"LJ targets: {len(target)} states in {time.perf_counter() - t0:.1f} s", flush=True)

    def st(rho, T, reps, weight=1.0, tgt=None):
        name = state_name(rho, T)
        return State(rho, T, target=(tgt or target)[name], weight=weight, n_particles=n_of[rho], replicas=reps)

    train_name = state_name(RHO_TRAIN, T_TRAIN)

    def evaluate(pot, seed=a.seed + 10, spec=None):
        """Fresh simulations, eval_seeds independent seed groups per state (the same seeds for every potential)."""
        return sample_groups(pot, spec or c["eval"], c["eval_seeds"], c["eval_equil"], seed)

    train = [st(RHO_TRAIN, T_TRAIN, c["ds_reps"])]

    # ---- DiffSim at rho=0.3, T=1.2 -------------------------------------------------------------
    eps0, sig0 = lj_guess_from_rdf(rdf.r, target[train_name], T_TRAIN)
    t0 = time.perf_counter()
    # the shared recipe (cg.diffsim.recipe): the LJ prior converges first (network frozen for 60 % of the steps),
    # then the network corrects what the prior cannot express; the parameters of the last 30 % are averaged
    fit = fit_pair_potential(train, rdf, DiffSimConfig(steps=c["ds_steps"], tau=c["ds_tau"], lr=0.02,
                                                       net_start=int(0.6 * c["ds_steps"]), final_steps=c["ds_final"],
                                                       final_tau=c["ds_final_tau"], average_last=0.3),
                             device=dev, seed=a.seed, progress=False)
    pot = fit.potential
    t_ds = time.perf_counter() - t0
    step_s = float(np.mean([h["time_s"] for h in fit.history[1:] if h["tau"] == c["ds_tau"]]))
    print(f"DiffSim: {c['ds_steps']} steps in {t_ds:.1f} s ({step_s:.3f} s/step at tau={c['ds_tau']}, "
          f"{c['ds_reps']} replicas x {c['n_train']} particles)", flush=True)

    # ---- IBI at rho=0.3, T=1.2 -----------------------------------------------------------------
    t0 = time.perf_counter()
    ibi_train = [st(RHO_TRAIN, T_TRAIN, c["ibi_reps"])]
    res = ibi(ibi_train, rdf, n_iter=c["ibi_iter"], equil_steps=c["ibi_equil"], prod_steps=c["ibi_prod"],
              seed=a.seed + 3, device=dev, progress=False)
    t_ibi = time.perf_counter() - t0
    print(f"IBI: {c['ibi_iter']} iterations in {t_ibi:.1f} s", flush=True)
    ibi_avg = ibi_averaged(res, c["ibi_iter"] // 2)

    # ---- evaluation: every potential with the same eval_seeds seed groups; the true potential is the noise floor --
    t0 = time.perf_counter()
    lj_models = {"diffsim": pot, "ibi": res.potential, "ibi_averaged": ibi_avg, "true_potential": true}
    ev = {k: evaluate(p) for k, p in lj_models.items()}
    ev["initial_guess"] = evaluate(NeuralPairPotential(prior="lj", epsilon=eps0, sigma=sig0),
                                   spec={RHO_TRAIN: c["eval"][RHO_TRAIN]})
    print(f"evaluation in {time.perf_counter() - t0:.1f} s", flush=True)
    per_seed = {m: {k: np.abs(g - target[k]).mean(1) for k, g in gs.items()} for m, gs in ev.items()}
    mse = {m: {k: ((g - target[k]) ** 2).mean(1) for k, g in gs.items()} for m, gs in ev.items()}

    def mean_se(x):
        x = np.asarray(x, float)
        return {"mean": float(x.mean()), "se": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")}

    true_g = ev["true_potential"]
    out = {
        "config": "quick" if a.quick else "full",
        # mean over the evaluation seeds of the g(r) MAE against the target (r in [0, 2.5])
        **{f"rdf_mae_{m}": {k: float(v.mean()) for k, v in per_seed[m].items()} for m in ev},
        "rdf_mae_se": {m: {k: mean_se(v)["se"] for k, v in per_seed[m].items()} for m in ev},
        "rdf_mae_per_seed": {m: {k: v.tolist() for k, v in per_seed[m].items()} for m in ev},
        # MAE of the g(r) averaged over all seeds (less evaluation noise in it)
        "rdf_mae_pooled": {m: {k: mae(g.mean(0), target[k]) for k, g in gs.items()} for m, gs in ev.items()},
        # paired by seed (same initial conditions and random forces): MAE(model) - MAE(true potential)
        "rdf_mae_excess_over_true": {m: {k: mean_se(per_seed[m][k] - per_seed["true_potential"][k])
                                         for k in per_seed[m]} for m in ev if m != "true_potential"},
        "rdf_mae_diffsim_minus": {m: {k: mean_se(per_seed["diffsim"][k] - per_seed[m][k]) for k in per_seed[m]}
                                  for m in ("ibi", "ibi_averaged")},
        # noise-corrected systematic error: mean squared g(r) error minus that of the true potential (same seeds;
        # the noise of evaluation and target cancels in expectation); its square root is the RMS systematic error
        "rdf_msd_excess_over_true": {m: {k: mean_se(mse[m][k] - mse["true_potential"][k]) for k in mse[m]}
                                     for m in ev if m != "true_potential"},
        "noise_floor": {k: {"true_potential_mae": float(per_seed["true_potential"][k].mean()),
                            "true_potential_se": mean_se(per_seed["true_potential"][k])["se"],
                            "target_noise": target_noise[k],
                            "eval_noise_per_seed": float(np.mean(np.sqrt(2 / np.pi) * true_g[k].std(0, ddof=1)))}
                        for k in target},
        "protocol": {"target": {state_name(r, T_TRAIN): {"replicas": n * c["target_groups"], "steps": p,
                                                         "particles": n_of[r]} for r, (n, p) in c["target"].items()},
                     "evaluation": {state_name(r, T_TRAIN): {"seeds": c["eval_seeds"], "replicas_per_seed": n,
                                                             "steps": p, "particles": n_of[r]}
                                    for r, (n, p) in c["eval"].items()}},
        "potential_diffsim": potential_error(pot, true),
        "potential_ibi": potential_error(res.potential, true),
        "potential_ibi_averaged": potential_error(ibi_avg, true),
        "potential_true": {"r_min": 2 ** (1 / 6), "u_min": -1.0},
        "initial_guess": {"epsilon": eps0, "sigma": sig0},
        "diffsim_step_s": step_s, "diffsim_fit_s": t_ds,
        "diffsim_md_steps": fit.info["md_steps"],
        "ibi_iteration_s": t_ibi / c["ibi_iter"], "ibi_fit_s": t_ibi,
        "ibi_md_steps": c["ibi_iter"] * (c["ibi_equil"] + c["ibi_prod"]),
        "ibi_history": res.history, "diffsim_final_window_loss": fit.history[-1]["loss"],
        "device": str(dev), "threads": a.threads,
    }
    g_ds, g_ibi, g_ibi_avg = ({k: v.mean(0) for k, v in ev[m].items()} for m in ("diffsim", "ibi", "ibi_averaged"))

    # ---- two temperatures at once: a mixture seen as one type ----------------------------------
    if not a.skip_multi:
        t0 = time.perf_counter()
        mix = TypedPairPotential({k: LennardJones(e, sg, learnable=False) for k, (e, sg) in MIXTURE.items()})
        temps = (*T_MULTI, T_MULTI_VAL)
        mix_states = [State(RHO_TRAIN, T, n_particles=c["n_train"], replicas=c["mt_target_reps"], composition=X_MIX)
                      for T in temps]
        _, o = sample(mix, mix_states, c["target_equil"], c["mt_target_prod"], a.seed + 30)
        mtarget = {f"rho{RHO_TRAIN:g}_T{T:g}": o["g"][i] for i, T in enumerate(temps)}
        # noise floor: the mixture re-simulated with the evaluation protocol
        # (mt_eval_reps seed groups of one replica each, like the evaluation of the models)
        ev_mix = [State(RHO_TRAIN, T, n_particles=c["n_train"], composition=X_MIX, name=state_name(RHO_TRAIN, T))
                  for T in temps]
        g_mix_floor = sample_seeds(mix, ev_mix, c["mt_eval_reps"], c["eval_equil"], c["mt_eval_prod"], a.seed + 11)
        print(f"mixture targets in {time.perf_counter() - t0:.1f} s", flush=True)

        def mst(T, reps):
            return st(RHO_TRAIN, T, reps, tgt=mtarget)

        mt = [mst(T, c["ds_reps"]) for T in T_MULTI]
        names = [s.name for s in mt]
        # both DiffSim models start from the Boltzmann-inverted targets (IBI's start), fitted without MD:
        # u(r; T) to -kT ln g_T at each training temperature, the T-independent u(r) to their mean; started from
        # the PMFs, prior and networks learn at the same small rate (0.001: two fits of u(r;T) gave g(r) MAE
        # 0.0048/0.0073 at T=1.2 and 0.0087/0.0064 at T=2 against 0.0098 and 0.0090 with 0.002)
        mcfg = DiffSimConfig(init="pmf", lr=0.001, net_lr_scale=1.0, steps=c["mt_ds_steps"], tau=c["ds_tau"],
                             final_steps=c["mt_ds_final"], final_tau=c["ds_final_tau"])
        t1 = time.perf_counter()
        pot_ent = fit_pair_potential(mt, rdf, mcfg.replace(temperature_dependent=True), device=dev, seed=a.seed + 2,
                                     progress=False).potential
        t_ent = time.perf_counter() - t1
        pot_one = fit_pair_potential(mt, rdf, mcfg, device=dev, seed=a.seed + 2, progress=False).potential
        ikw = dict(n_iter=c["mt_ibi_iter"], equil_steps=c["ibi_equil"], prod_steps=c["ibi_prod"], device=dev,
                   progress=False, average_last=c["mt_ibi_iter"] // 2)
        t1 = time.perf_counter()
        ibi_lo = ibi([mst(T_MULTI[0], c["ibi_reps"])], rdf, seed=a.seed + 5, **ikw).potential
        t_ibi_mt = time.perf_counter() - t1
        ibi_hi = ibi([mst(T_MULTI[1], c["ibi_reps"])], rdf, seed=a.seed + 6, **ikw).potential
        ibi_ms = ibi([mst(T, c["ibi_reps"]) for T in T_MULTI], rdf, seed=a.seed + 7, **ikw).potential
        ev = [State(RHO_TRAIN, T, n_particles=c["n_train"]) for T in temps]
        models = {"diffsim_u(r;T)": pot_ent, "diffsim_one_u(r)": pot_one, f"ibi_T{T_MULTI[0]:g}": ibi_lo,
                  f"ibi_T{T_MULTI[1]:g}": ibi_hi, "ibi_multistate": ibi_ms}
        gm = {k: sample_seeds(p, ev, c["mt_eval_reps"], c["eval_equil"], c["mt_eval_prod"], a.seed + 11)
              for k, p in models.items()}
        gm["mixture_resimulated"] = g_mix_floor
        mt_seed = {k: {s: np.abs(g[s] - mtarget[s]).mean(1) for s in mtarget} for k, g in gm.items()}
        # mean +- s.e. over mt_eval_reps seeds (one replica each; the same seeds for every model)
        out["multi_temperature"] = {k: {s: float(v.mean()) for s, v in d.items()} for k, d in mt_seed.items()}
        out["multi_temperature_se"] = {k: {s: float(v.std(ddof=1) / np.sqrt(len(v))) for s, v in d.items()}
                                       for k, d in mt_seed.items()}
        gm = {k: {s: v.mean(0) for s, v in g.items()} for k, g in gm.items()}
        out["multi_temperature_train"] = names
        out["multi_temperature_validation"] = [f"rho{RHO_TRAIN:g}_T{T_MULTI_VAL:g}"]
        out["multi_temperature_reference"] = {"mixture": {f"{i}-{j}": {"epsilon": e, "sigma": sg}
                                                          for (i, j), (e, sg) in MIXTURE.items()},
                                              "composition": list(X_MIX), "density": RHO_TRAIN}
        out["multi_temperature_fit_s"] = {"diffsim_u(r;T)": t_ent, "ibi_one_state": t_ibi_mt}
        out["multi_temperature_s"] = time.perf_counter() - t0
        print(f"two-temperature experiment in {out['multi_temperature_s']:.1f} s", flush=True)

    # ---- typed mixture: type-pair potentials from partial RDFs of two compositions ---------------
    if not a.skip_mixture:
        t0 = time.perf_counter()
        mix = TypedPairPotential({k: LennardJones(e, sg, learnable=False) for k, (e, sg) in MIXTURE.items()})
        comps = ((0.25, 0.75), (0.75, 0.25))
        ms = [State(RHO_TRAIN, T_TRAIN, n_particles=c["n_train"], replicas=c["mt_target_reps"], composition=x)
              for x in comps]
        _, o = sample(mix, ms, c["target_equil"], c["mt_target_prod"], a.seed + 40)
        fit_states = [State(RHO_TRAIN, T_TRAIN, target=o["g_partial"][i], n_particles=c["n_train"],
                            replicas=c["mix_reps"], composition=x) for i, x in enumerate(comps)]
        # start: every pair potential a learnable LJ at the minimum of the Boltzmann-inverted partial RDF of the
        # 50:50-weighted channels (the recipe's start); the guess is kept for the table
        guess = {}
        for ch, (i, j) in enumerate(type_pairs(2)):
            gch = np.mean([o["g_partial"][k][ch] for k in range(len(comps))], axis=0)
            guess[(i, j)] = lj_guess_from_rdf(rdf.r, gch, T_TRAIN)
        t1 = time.perf_counter()
        fm = fit_pair_potential(fit_states, rdf, DiffSimConfig(pair_model="lj", lr=0.01, steps=c["mix_steps"],
                                                               tau=c["ds_tau"], average_last=0.3),
                                device=dev, seed=a.seed + 6, progress=False)
        learn = fm.potential
        t_fit = time.perf_counter() - t1
        ev_states = [State(RHO_TRAIN, T_TRAIN, n_particles=c["n_train"], replicas=c["mt_eval_reps"], composition=x)
                     for x in comps]
        _, og = sample(learn, ev_states, c["eval_equil"], c["mt_eval_prod"], a.seed + 12)
        _, o0 = sample(TypedPairPotential({k: LennardJones(*guess[k], learnable=False) for k in guess}), ev_states,
                       c["eval_equil"], c["mt_eval_prod"], a.seed + 12)
        _, of = sample(mix, ev_states, c["eval_equil"], c["mt_eval_prod"], a.seed + 12)
        out["mixture_recovery"] = {
            "compositions": [list(x) for x in comps],
            "pairs": {f"{i}-{j}": {"true": {"epsilon": MIXTURE[(i, j)][0], "sigma": MIXTURE[(i, j)][1]},
                                   "initial": {"epsilon": guess[(i, j)][0], "sigma": guess[(i, j)][1]},
                                   "diffsim": {"epsilon": learn.pair(i, j).epsilon, "sigma": learn.pair(i, j).sigma}}
                      for i, j in type_pairs(2)},
            "partial_rdf_mae": {name: {s.name: mae(g["g_partial"][k], o["g_partial"][k]) for k, s in enumerate(ms)}
                                for name, g in (("diffsim", og), ("initial_guess", o0), ("true_resimulated", of))},
            "fit_s": t_fit, "step_s": fm.info["step_s"], "s": time.perf_counter() - t0}
        print(f"typed-mixture recovery in {time.perf_counter() - t0:.1f} s", flush=True)
    out["total_s"] = time.perf_counter() - t_start
    out["total_cpu_s"] = time.process_time() - cpu_start

    # ---- report --------------------------------------------------------------------------------
    print(f"\nLJ recovery, trained at rho={RHO_TRAIN}, T={T_TRAIN} ({out['config']}); g(r) MAE over r in [0, 2.5], "
          f"mean +- s.e. over {c['eval_seeds']} evaluation seeds (the same seeds for every potential)")
    cols = ("diffsim", "ibi", "ibi_averaged", "true_potential")
    print(f"{'state':<14}" + "".join(f"{k:>19}" for k in cols) + f"{'target noise':>14}")
    for k in out["rdf_mae_diffsim"]:
        tag = " (train)" if k == train_name else " (validation)"
        print(f"{k:<14}" + "".join(f"{out['rdf_mae_' + m][k]:>11.4f} +-{out['rdf_mae_se'][m][k]:.4f}" for m in cols)
              + f"{out['noise_floor'][k]['target_noise']:>14.4f}{tag}")
    print("pooled over seeds:")
    for k in out["rdf_mae_diffsim"]:
        print(f"{k:<14}" + "".join(f"{out['rdf_mae_pooled'][m][k]:>19.4f}" for m in cols))
    print("paired differences (per seed), mean +- s.e.:")
    for k in out["rdf_mae_diffsim"]:
        print(f"{k:<14}" + "".join(f"  DiffSim-{m}: {d[k]['mean']:+.4f} +-{d[k]['se']:.4f}"
                                   for m, d in out["rdf_mae_diffsim_minus"].items())
              + "".join(f"  {m}-true: {d[k]['mean']:+.4f} +-{d[k]['se']:.4f}"
                        for m, d in out["rdf_mae_excess_over_true"].items() if m != "initial_guess"))
    print("systematic RMS g(r) error, sqrt(MSE(model) - MSE(true potential)) (noise-corrected; 0 if negative):")
    for k in out["rdf_mae_diffsim"]:
        print(f"{k:<14}" + "".join(f"  {m}: {np.sqrt(max(0.0, d[k]['mean'])):.4f}"
                                   for m, d in out["rdf_msd_excess_over_true"].items() if m != "initial_guess"))
    print(f"initial guess (Boltzmann-inverted LJ) at train state: {out['rdf_mae_initial_guess'][train_name]:.4f}")
    print(f"\n{'potential':<12}{'r_min':>8}{'u_min':>8}{'|u-u_LJ|':>10}   (true: r_min 1.1225, u_min -1)")
    for k in ("diffsim", "ibi", "ibi_averaged"):
        p = out[f"potential_{k}"]
        print(f"{k:<12}{p['r_min']:>8.4f}{p['u_min']:>8.4f}{p['u_mae']:>10.4f}")
    print(f"\nwall time: DiffSim {step_s:.3f} s per optimisation step ({c['ds_tau']} MD steps with backprop), "
          f"IBI {out['ibi_iteration_s']:.2f} s per iteration ({c['ibi_equil'] + c['ibi_prod']} MD steps); "
          f"MD steps DiffSim {out['diffsim_md_steps']} vs IBI {out['ibi_md_steps']} (x replicas)")
    if "multi_temperature" in out:
        print(f"\nTwo temperatures at rho={RHO_TRAIN}, reference: binary LJ mixture seen as one type (g(r) MAE; "
              f"trained at T={T_MULTI[0]:g} and {T_MULTI[1]:g}, T={T_MULTI_VAL:g} is validation)")
        names = list(next(iter(out["multi_temperature"].values())))
        print(f"{'model':<22}" + "".join(f"{n:>18}" for n in names))
        for k, v in out["multi_temperature"].items():
            print(f"{k:<22}" + "".join(f"{v[n]:>10.4f} +-{out['multi_temperature_se'][k][n]:.4f}" for n in names))
    if "mixture_recovery" in out:
        m = out["mixture_recovery"]
        print(f"\nTyped mixture: LJ type-pair potentials from partial RDFs of x_A = 0.25 and 0.75 at once "
              f"({m['fit_s']:.0f} s)")
        print(f"{'pair':<6}{'eps true':>10}{'initial':>10}{'DiffSim':>10}{'sig true':>10}{'initial':>10}{'DiffSim':>10}")
        for k, v in m["pairs"].items():
            print(f"{k:<6}{v['true']['epsilon']:>10.3f}{v['initial']['epsilon']:>10.3f}{v['diffsim']['epsilon']:>10.3f}"
                  f"{v['true']['sigma']:>10.3f}{v['initial']['sigma']:>10.3f}{v['diffsim']['sigma']:>10.3f}")
        for k, v in m["partial_rdf_mae"].items():
            print(f"  partial g(r) MAE {k:<18}" + "  ".join(f"{s} {x:.4f}" for s, x in v.items()))
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
        if "multi_temperature" in out:
            plot_rdfs(d / "two_temperatures_rdf.png", rdf.r,
                      {s: {"target": mtarget[s], **{k: gm[k][s] for k in models}} for s in mtarget},
                      title="binary mixture seen as one type")
            curves = {f"DiffSim u(r;T={T:g})": pot_ent.evaluate(r, T)[0] for T in temps}
            curves.update({k: p.evaluate(r)[0] for k, p in models.items() if k.startswith("ibi")})
            plot_potentials(d / "two_temperatures_u.png", r, curves, ylim=(-1.5, 3.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
