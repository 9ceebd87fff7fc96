"""Reference-data throughput: OpenMM AA frames of alanine dipeptide and GFN2-xTB labels.

    python benchmarks/reference_data.py [--frames 10000] [--label 1000] [--json out.json]

Prints the wall time to generate N AA frames (OpenMM amber14, vacuum, 300 K, 1 fs, a frame every
100 steps, after 10 ps equilibration) and to label M of them with GFN2-xTB (tblite), on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--label", type=int, default=1000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from forcefield.data import alanine_dipeptide_pdb
    from forcefield.reference import label_dataset, run_openmm_md

    t0 = time.perf_counter()
    aa = run_openmm_md(alanine_dipeptide_pdb(), n_frames=a.frames, save_every=100, progress=False)
    t_md = time.perf_counter() - t0
    sub = aa[:: max(1, len(aa) // a.label)][: a.label]
    t0 = time.perf_counter()
    label_dataset(sub, progress=False)
    t_lab = time.perf_counter() - t0
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "aa_frames": a.frames, "aa_seconds": t_md, "aa_ns_simulated": a.frames * 100 * 1e-6,
        "xtb_frames": len(sub), "xtb_seconds": t_lab, "xtb_ms_per_frame": 1000 * t_lab / len(sub),
    }
    print(f"{'task':<44}{'wall time':>12}")
    print(f"{'OpenMM MD, ' + str(a.frames) + ' frames (' + format(res['aa_ns_simulated'], '.1f') + ' ns)':<44}{t_md:>10.1f} s")
    print(f"{'GFN2-xTB labels, ' + str(len(sub)) + ' frames':<44}{t_lab:>10.1f} s  ({res['xtb_ms_per_frame']:.1f} ms/frame)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
