"""A run folder's backmapper at several prior temperatures, and where its all-atom error comes from.

Reads ``backmap.pt``, ``reference.npz`` and ``topology.pdb`` of a ``cgwb run`` folder, takes the pipeline's
held-out frames (the last 10 % of each reference replica, :func:`forcefield.splits.block_split`) and reports
:func:`backmap.recipe.evaluate_backmapper`'s prior-sample figures for each temperature (the scale of the
prior's spread; 1 = as trained, what the run reports), beside the run's own nearest-CG floor.

It also prints, per rotor of three interchangeable atoms (methyl hydrogens,
:func:`backmap.losses.equivalent_groups`), the RMS error of the decoded rotor angle (mod 120°) and how the
reference's angles spread (a free rotor is uniform: 34.6° RMS against any fixed guess), since the beads do not
fix such rotors.

    python benchmarks/backmap_run_temperatures.py runs/alanine-dipeptide [--temperatures 1 0.7 0.5 0.0001]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def rotor_quads(bonds: np.ndarray, z: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """(group, dihedral quad H-C-X-Y) for each group of three interchangeable atoms on a carbon."""
    from backmap.losses import equivalent_groups

    nb: dict[int, set[int]] = {}
    for i, j in np.asarray(bonds).reshape(-1, 2).tolist():
        nb.setdefault(i, set()).add(j)
        nb.setdefault(j, set()).add(i)
    out = []
    for g in equivalent_groups(bonds, z):
        if len(g) != 3:
            continue
        c = next(iter(nb[g[0]]))
        xs = [x for x in nb[c] if x not in g]
        if len(xs) != 1:
            continue
        ys = sorted(y for y in nb[xs[0]] if y != c and z[y] > 1) or sorted(y for y in nb[xs[0]] if y != c)
        if ys:
            out.append((g, [g[0], c, xs[0], ys[0]]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.5, 1e-4])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from backmap import Backmapper
    from backmap.recipe import BackmapConfig, evaluate_backmapper
    from forcefield import load_dataset
    from forcefield.geometry import dihedrals
    from forcefield.splits import block_split, trajectory_lengths

    ref = load_dataset(a.run / "reference.npz")
    ref.extra["pdb"] = np.array((a.run / "topology.pdb").read_text())
    _, te = block_split(len(ref), 0.1, trajectory_lengths(ref.extra, len(ref)))
    held = ref[te]
    bm = Backmapper.load(a.run / "backmap.pt")
    floor = json.loads((a.run / "backmap_eval.json").read_text()).get("backmap_rmsd_all_floor", float("nan"))
    rows = []
    print(f"{len(held)} held-out frames, {a.samples} samples each; nearest-CG floor (all atoms) {floor:.3f} Å")
    print(f"{'T':>7s} {'rmsd_all':>9s} {'heavy':>7s} {'valid':>6s} {'clash':>6s} {'spread':>7s}  rotor RMS error (deg)")
    quads = rotor_quads(bm.bonds, bm.z)
    sel = held[np.linspace(0, len(held) - 1, min(len(held), a.frames)).round().astype(int)]
    t_ref = np.degrees(dihedrals(sel.R, np.array([q for _, q in quads])))  # (F, rotors)
    for T in a.temperatures:
        cfg = BackmapConfig(temperature=T, samples=a.samples, frames=a.frames)
        m = evaluate_backmapper(bm, held, cfg, seed=0)
        gen = bm.sample_positions(bm.mapping.map_positions(sel.R), n_samples=a.samples, temperature=T, seed=0)
        t_gen = np.degrees(dihedrals(gen.reshape(len(sel), a.samples, -1, 3), np.array([q for _, q in quads])))
        err = (t_gen - t_ref[:, None] + 60.0) % 120.0 - 60.0
        rot = np.sqrt((err ** 2).mean((0, 1)))
        row = {"temperature": T, **{k: float(v) for k, v in m.items() if k.startswith("prior_")
                                    and isinstance(v, float)}, "rotor_rms_error_deg": rot.tolist()}
        rows.append(row)
        print(f"{T:7.4g} {row['prior_rmsd_all']:9.3f} {row['prior_rmsd_heavy']:7.3f} {row['prior_valid_ratio']:6.3f} "
              f"{row['prior_clash_rate']:6.3f} {row['prior_sample_spread']:7.3f}  "
              + " ".join(f"{r:5.1f}" for r in rot), flush=True)
    spread = [float(np.sqrt((((t_ref[:, k] - np.angle(np.exp(3j * np.radians(t_ref[:, k])).mean(), deg=True) / 3
                                + 60.0) % 120.0 - 60.0) ** 2).mean())) for k in range(len(quads))]
    print("rotors (H-C-X-Y atoms):", [q for _, q in quads])
    print("reference spread about its circular mean (deg, 34.6 = uniform):", " ".join(f"{s:5.1f}" for s in spread))
    if a.json:
        a.json.write_text(json.dumps({"floor": floor, "rows": rows, "rotors": [q for _, q in quads],
                                      "reference_spread_deg": spread}, indent=1))


if __name__ == "__main__":
    main()
