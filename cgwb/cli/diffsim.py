"""``cgwb diffsim``: pair potentials from RDFs by differentiable simulation or IBI (reduced LJ units)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from forcefield.errors import InputError

from .common import add_device, add_group, add_quiet, pick_device

UNITS = ("All quantities are in reduced Lennard-Jones units (epsilon = sigma = m = k_B = 1): densities rho sigma^3, "
         "temperatures k_B T / epsilon, lengths in sigma, energies in epsilon.")


def _state(text: str) -> tuple[float, float]:
    try:
        rho, T = (float(v) for v in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"state {text!r}: expected DENSITY:TEMPERATURE, e.g. 0.3:1.2") from e
    return rho, T


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from e


def _mixture(text: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(v) for v in part.split(",")) for part in text.split(";")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"mixture {text!r}: expected EPS,SIGMA;EPS,SIGMA;... per type pair") from e
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"mixture {text!r}: each type pair needs EPS,SIGMA")
    return pairs


def register(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    g = add_group(sub, name, help_)

    p = g.add_parser("target", help="simulate target RDFs with a true Lennard-Jones potential",
                     description="Simulate g(r) of a (smoothly cut) Lennard-Jones fluid at one or more states and "
                                 "write a target file for `cgwb diffsim fit`. " + UNITS)
    p.add_argument("-o", "--out", default="target_rdf.npz", help="output .npz (default: %(default)s)")
    p.add_argument("--state", type=_state, action="append", default=None, metavar="RHO:T",
                   help="state DENSITY:TEMPERATURE, repeatable (default: 0.3:1.2)")
    p.add_argument("--epsilon", type=float, default=1.0, help="LJ well depth (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=1.0, help="LJ diameter (default: %(default)s)")
    p.add_argument("--particles", type=int, default=256, help="particles per system (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=2, help="independent systems per state (default: %(default)s)")
    p.add_argument("--equil", type=int, default=1000, help="equilibration steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5000, help="production steps (default: %(default)s)")
    p.add_argument("--r-max", type=float, default=2.5, help="RDF range (default: %(default)s)")
    p.add_argument("--bins", type=int, default=100, help="RDF bins (default: %(default)s)")
    p.add_argument("--vacf-lag", type=int, default=0, help="also store the velocity autocorrelation up to this "
                                                          "many frames (10 steps apart; default: none)")
    p.add_argument("--mixture", type=_mixture, default=None, metavar="EPS,SIG;EPS,SIG;...",
                   help="simulate a mixture: LJ (epsilon, sigma) per type pair in the order 0-0;0-1;...;0-(n-1);1-1;"
                        "1-2;... (e.g. '1,1;0.7,1.15;0.5,1.3' for two types); needs --composition")
    p.add_argument("--composition", type=_floats, default=None, metavar="X0,X1,...",
                   help="mole fractions of the mixture's types (e.g. 0.5,0.5)")
    p.add_argument("--partial", action="store_true",
                   help="store the partial RDFs g_ab(r) (fitted with one potential per type pair) instead of the "
                        "total g(r) of all particles seen as one type")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_target)

    p = g.add_parser("fit", help="fit a pair potential to target RDFs (DiffSim or IBI)",
                     description="Fit a pair potential to the target g(r) of every state in TARGET (made by "
                                 "`cgwb diffsim target`). Writes OUT/potential.pt (model), OUT/potential.npz and "
                                 "OUT/potential.csv (tables r, u, f), OUT/rdf.png, OUT/u.png and OUT/fit.json. "
                                 + UNITS)
    p.add_argument("target", help="target .npz")
    p.add_argument("-o", "--out", default="diffsim_fit", help="output folder (default: %(default)s)")
    p.add_argument("--method", choices=["diffsim", "ibi"], default="diffsim")
    p.add_argument("--steps", type=int, default=200, help="DiffSim optimisation steps / IBI iterations "
                                                          "(default: %(default)s)")
    p.add_argument("--tau", type=int, default=100, help="DiffSim: MD steps per window (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.02, help="DiffSim: learning rate of the prior; the network "
                                                          "uses lr/10 (default: %(default)s)")
    p.add_argument("--final-steps", type=int, default=0,
                   help="DiffSim: the last N of --steps use longer windows of --final-tau MD steps (less noisy "
                        "gradients where the parameters are averaged; default: %(default)s)")
    p.add_argument("--final-tau", type=int, default=300,
                   help="DiffSim: MD steps per window in the final phase (default: %(default)s)")
    p.add_argument("--prior", choices=["lj", "repulsive", "none"], default="lj", help="DiffSim prior")
    p.add_argument("--init", choices=["lj", "pmf"], default="lj",
                   help="DiffSim start: LJ prior matched to the minimum of -kT ln g (lj), or the whole potential fitted "
                        "to -kT ln g of the targets like IBI's first iterate (pmf; per temperature for "
                        "--temperature-dependent) (default: %(default)s)")
    p.add_argument("--temperature-dependent", action="store_true",
                   help="DiffSim: learn u(r; T) = e(r) - T s(r) (energy/entropy split) from states at several "
                        "temperatures at once (tables are written per temperature)")
    p.add_argument("--hidden", type=int, default=64, help="DiffSim: MLP width (default: %(default)s)")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="per-state loss weights")
    p.add_argument("--vacf-weight", type=float, default=0.0, help="DiffSim: weight of a VACF loss (needs a target "
                                                                   "made with --vacf-lag; default: RDF only)")
    p.add_argument("--replicas", type=int, default=2, help="systems per state (default: %(default)s)")
    p.add_argument("--ibi-steps", type=int, default=1500, help="IBI: production steps per iteration")
    p.add_argument("--eval-steps", type=int, default=3000, help="steps to re-simulate the result for the g(r) "
                                                                "plot and MAE (0: skip)")
    p.add_argument("--checkpoint", default=None, help="DiffSim checkpoint file (resumed when it exists)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_fit)

    p = g.add_parser("eval", help="simulate a potential at the states of a target file and report g(r) MAE",
                     description="Simulate a potential (model .pt or table .npz/.csv) at every state of TARGET and "
                                 "print the g(r) mean absolute error; optional PNG. " + UNITS)
    p.add_argument("potential", help="model .pt or table .npz/.csv")
    p.add_argument("target", help="target .npz")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--plot", default=None, help="PNG of g(r)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_eval)


def _load_potential(path: str):
    from cg.diffsim.potentials import load_model, read_table

    return load_model(path) if path.endswith(".pt") else read_table(path)


def _target(a: argparse.Namespace) -> int:
    from cg.diffsim.ensemble import State, sample_all, save_targets
    from cg.diffsim.observables import RDF, type_pairs
    from cg.diffsim.potentials import LennardJones, TypedPairPotential

    comp = None
    if a.mixture is not None or a.composition is not None or a.partial:
        if a.mixture is None or a.composition is None:
            raise InputError("--mixture and --composition go together (and --partial needs both)")
        nt = len(a.composition)
        keys = type_pairs(nt)
        if len(a.mixture) != len(keys):
            raise InputError(f"--mixture: {nt} types need {len(keys)} type pairs (EPS,SIGMA each), got {len(a.mixture)}")
        pot = TypedPairPotential({k: LennardJones(e, sg, learnable=False) for k, (e, sg) in zip(keys, a.mixture)})
        comp = a.composition
    else:
        pot = LennardJones(a.epsilon, a.sigma, learnable=False)
    states = [State(rho, T, n_particles=a.particles, replicas=a.replicas, composition=comp)
              for rho, T in (a.state or [(0.3, 1.2)])]
    rdf = RDF(a.r_max, a.bins)
    t0 = time.perf_counter()
    out = sample_all(pot.table(create_graph=False), states, rdf, a.equil, a.steps, seed=a.seed,
                     device=pick_device(a.device), progress=not a.quiet, vacf_lag=a.vacf_lag, partial=a.partial)
    save_targets(a.out, rdf, states, out["g_partial"] if a.partial else out["g"], out["vacf"])
    kind = "partial g_ab(r)" if a.partial else "g(r)"
    print(f"wrote {a.out}: {kind} of {len(states)} state(s) ({', '.join(s.name for s in states)}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _fit(a: argparse.Namespace) -> int:
    import numpy as np

    from cg.diffsim.ensemble import load_targets, sample_all
    from cg.diffsim.ibi import ibi
    from cg.diffsim.plots import plot_potentials, plot_rdfs
    from cg.diffsim.observables import type_pairs
    from cg.diffsim.potentials import TabulatedPotential, save_model, well, write_table

    dev = pick_device(a.device)
    rdf, states = load_targets(a.target)
    if a.weights is not None:
        if len(a.weights) != len(states):
            raise InputError(f"--weights: {len(a.weights)} values for {len(states)} states in {a.target}")
        for s, w in zip(states, a.weights):
            s.weight = w
    for s in states:
        s.replicas = a.replicas
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    partial = states[0].target.ndim == 2
    temps = sorted({s.temperature for s in states})
    if a.temperature_dependent and (a.method != "diffsim" or len(temps) < 2):
        raise InputError("--temperature-dependent needs --method diffsim and states at two or more temperatures")
    if partial and a.method != "diffsim":
        raise InputError("partial RDF targets (mixtures) are fitted with --method diffsim only")
    if a.method == "diffsim":
        from cg.diffsim.recipe import DiffSimConfig, fit_pair_potential

        cfg = DiffSimConfig.build(dict(prior=a.prior, hidden=a.hidden, temperature_dependent=a.temperature_dependent,
                                       init=a.init, steps=a.steps, tau=a.tau, lr=a.lr, final_steps=a.final_steps,
                                       final_tau=a.final_tau, vacf_weight=a.vacf_weight), source="cgwb diffsim fit")
        fit = fit_pair_potential(states, rdf, cfg, device=dev, seed=a.seed, checkpoint=a.checkpoint,
                                 progress=not a.quiet)
        pot = fit.potential
        info = {"method": "diffsim", "history": fit.history, "step_s": fit.info["step_s"]}
    else:
        res = ibi(states, rdf, n_iter=a.steps, prod_steps=a.ibi_steps, seed=a.seed, device=dev,
                  progress=not a.quiet)
        pot = res.potential
        info = {"method": "ibi", "history": res.history}
    info["fit_s"] = time.perf_counter() - t0
    save_model(pot, out / "potential.pt")
    r = np.linspace(0.85, pot.r_cut, 400)
    written = ["potential.pt"]
    if partial:  # one table per type pair
        info["well"] = {}
        curves = {}
        for i, j in pot.type_keys:
            pp = pot.pair(i, j)
            info["well"][f"{i}-{j}"] = well(pp)
            for ext in ("npz", "csv"):
                write_table(pp, out / f"potential_{i}-{j}.{ext}")
                written.append(f"potential_{i}-{j}.{ext}")
            curves[f"{i}-{j}"] = pp.evaluate(r)[0]
        plot_potentials(out / "u.png", r, curves, title="DiffSim type-pair potentials")
    elif pot.temperature_dependent:  # one table per temperature of the targets
        info["well"] = {}
        curves = {}
        for T in temps:
            tab = TabulatedPotential(r_fine := np.linspace(pot.r_table_min, pot.r_cut, 1001),
                                     pot.evaluate(r_fine, T)[0], apply_switch=False, r_cut=pot.r_cut, r_on=pot.r_on)
            info["well"][f"T{T:g}"] = well(tab)
            for ext in ("npz", "csv"):
                write_table(tab, out / f"potential_T{T:g}.{ext}")
                written.append(f"potential_T{T:g}.{ext}")
            curves[f"u(r; T={T:g})"] = pot.evaluate(r, T)[0]
        plot_potentials(out / "u.png", r, curves, title="DiffSim u(r; T) = e(r) - T s(r)")
    else:
        info["well"] = well(pot)
        write_table(pot, out / "potential.npz")
        write_table(pot, out / "potential.csv")
        written += ["potential.npz", "potential.csv"]
        plot_potentials(out / "u.png", r, {a.method: pot.evaluate(r)[0]}, title=f"{a.method} potential")
    written.append("u.png")
    if a.eval_steps > 0:
        tab = pot.state_tables([s.temperature for s in states], create_graph=False, device=dev)
        o = sample_all(tab, states, rdf, 500, a.eval_steps, seed=a.seed + 1, device=dev, progress=not a.quiet,
                       partial=partial)
        g = o["g_partial"] if partial else o["g"]
        info["rdf_mae"] = {s.name: float(np.abs(g[i] - s.target).mean()) for i, s in enumerate(states)}
        if partial:
            curves = {f"{s.name} {i}-{j}": {"target": s.target[ch], a.method: g[k][ch]}
                      for k, s in enumerate(states) for ch, (i, j) in enumerate(type_pairs(states[0].n_types))}
        else:
            curves = {s.name: {"target": s.target, a.method: g[i]} for i, s in enumerate(states)}
        plot_rdfs(out / "rdf.png", rdf.r, curves)
        written.append("rdf.png")
    from forcefield.fileio import atomic_path

    with atomic_path(out / "fit.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    w = info["well"]
    if "u_min" in w:
        print(f"{a.method}: fitted in {info['fit_s']:.1f} s; minimum u = {w['u_min']:.4f} at r = {w['r_min']:.4f}")
    else:
        print(f"{a.method}: fitted in {info['fit_s']:.1f} s; minima: " + ", ".join(
            f"{k}: u = {v['u_min']:.4f} at r = {v['r_min']:.4f}" for k, v in w.items()))
    for k, v in info.get("rdf_mae", {}).items():
        print(f"  g(r) MAE {k}: {v:.4f}")
    print(f"wrote {out}/: {', '.join(written + ['fit.json'])}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    import numpy as np

    from cg.diffsim.ensemble import load_targets, sample_all
    from cg.diffsim.plots import plot_rdfs

    pot = _load_potential(a.potential)
    rdf, states = load_targets(a.target)
    for s in states:
        s.replicas = a.replicas
    dev = pick_device(a.device)
    partial = states[0].target.ndim == 2
    if partial and pot.n_types != states[0].n_types:
        raise InputError(f"{a.target} holds partial RDFs of {states[0].n_types} types; {a.potential} has "
                         f"{pot.n_types} (fit one with `cgwb diffsim fit` on this target)")
    tab = pot.state_tables([s.temperature for s in states], create_graph=False, device=dev)
    o = sample_all(tab, states, rdf, 500, a.steps, seed=a.seed, device=dev, progress=not a.quiet, partial=partial)
    g = o["g_partial"] if partial else o["g"]
    for i, s in enumerate(states):
        print(f"{s.name}: g(r) MAE {np.abs(g[i] - s.target).mean():.4f}")
    if a.plot:
        name = Path(a.potential).name
        if partial:
            curves = {f"{s.name} ch{ch}": {"target": s.target[ch], name: g[i][ch]} for i, s in enumerate(states)
                      for ch in range(len(s.target))}
        else:
            curves = {s.name: {"target": s.target, name: g[i]} for i, s in enumerate(states)}
        plot_rdfs(a.plot, rdf.r, curves)
        print(f"wrote {a.plot}")
    return 0
