"""``report.json`` and a self-contained ``report.html`` / ``report.md`` for a pipeline run."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from forcefield.fileio import atomic_path

#: (key, label, unit) shown in the summary table, in order
SUMMARY_KEYS = [
    ("kernel_force_mae", "Kernel force field: force MAE on held-out xTB frames", "kcal/mol/Å"),
    ("kernel_energy_mae", "Kernel force field: energy MAE on held-out xTB frames", "kcal/mol"),
    ("kernel_active_rounds", "Kernel force field: active-learning rounds", ""),
    ("kernel_spot_force_mae", "Kernel force field: force MAE on its own MD frames (xTB spot check)", "kcal/mol/Å"),
    ("kernel_selfconsistency", "Kernel force field: own-MD error / held-out error (goal <= 1.5)", ""),
    ("reference_fes_js_floor", "Reference: phi/psi JS, first half vs second half of replicas (noise floor)", ""),
    ("reference_frac_phi_positive", "Reference: share of frames at phi > 0", ""),
    ("mapping_n_beads", "CG beads", ""),
    ("mapping_recon_rmsd", "Mapping: linear reconstruction RMSD", "Å"),
    ("cg_force_rmse_val", "CG potential: validation force RMSE", "kcal/mol/Å"),
    ("cg_ensemble", "CG potential: networks averaged (ensemble members)", ""),
    ("cg_member_force_rmse_val", "CG potential: validation force RMSE of each member", "kcal/mol/Å"),
    ("cg_bonded_js", "CG MD: bonded distributions JS (mean)", ""),
    ("cg_bonded_js_max", "CG MD: bonded distributions JS (max)", ""),
    ("cg_bonded_js_floor", "CG MD: bonded JS noise floor, reference half vs half (mean)", ""),
    ("cg_bonded_js_max_floor", "CG MD: bonded JS noise floor (max)", ""),
    ("cg_stable_fraction", "CG MD: stable replicas", ""),
    ("cg_md_ns_per_day", "CG MD: ns/day, summed over replicas", "ns/day"),
    ("cg_md_timestep_fs", "CG MD: time step", "fs"),
    ("cg_md_bead_masses", "CG MD: bead masses (mapped atoms, or every atom it represents)", ""),
    ("aa_ns_per_day", "AA sampling (OpenMM, all copies, equilibration included): ns/day", "ns/day"),
    ("cg_md_speedup_vs_aa", "CG MD ns/day over AA sampling ns/day, same machine (goal >= 100 for peptides)", ""),
    ("cg_rg_js", "CG MD (peptides): radius-of-gyration JS", ""),
    ("cg_rg_js_floor", "CG MD (peptides): its noise floor", ""),
    ("cg_end_to_end_js", "CG MD (peptides): end-to-end distance JS", ""),
    ("cg_end_to_end_js_floor", "CG MD (peptides): its noise floor", ""),
    ("cg_tica_js", "CG MD (peptides): 2-D TICA free-energy JS", ""),
    ("cg_tica_js_floor", "CG MD (peptides): its noise floor", ""),
    ("cg_q_js", "CG MD (peptides): native-contact fraction JS", ""),
    ("cg_distance_map_error", "CG MD (peptides): distance-map error", "Å"),
    ("cg_fes_js", "End to end: phi/psi free-energy JS, backmapped CG MD vs AA reference", ""),
    ("cg_fes_js_floor", "End to end: its noise floor (reference half vs half)", ""),
    ("backmap_rmsd_all", "Backmapping, prior samples: all-atom RMSD, symmetry-aware (held-out)", "Å"),
    ("backmap_rmsd_all_plain", "Backmapping, prior samples: all-atom RMSD, plain", "Å"),
    ("backmap_rmsd_heavy", "Backmapping, prior samples: heavy-atom RMSD (held-out)", "Å"),
    ("backmap_rmsd_all_floor", "Backmapping floor: all-atom RMSD of the training frame with the nearest CG "
     "(an ideal sampler's score)", "Å"),
    ("backmap_rmsd_heavy_floor", "Backmapping floor: heavy-atom RMSD of that nearest-CG frame", "Å"),
    ("backmap_recon_rmsd_all", "Backmapping, posterior reconstruction: all-atom RMSD", "Å"),
    ("backmap_valid_ratio", "Backmapping, prior samples: valid bond graphs", ""),
    ("backmap_clash_rate", "Backmapping, prior samples: clash rate", ""),
    ("backmap_relaxed_valid_ratio", "Backmapping, relaxed prior samples: valid bond graphs", ""),
    ("backmap_relaxed_clash_rate", "Backmapping, relaxed prior samples: clash rate", ""),
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(folder: Path, results: dict[str, Any], seconds: dict[str, float], plots: list[str],
                 title: str = "cgworkbench run") -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``report.html`` (plots embedded) into ``folder``."""
    report = dict(results)
    report["stage_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    report["total_seconds"] = round(sum(seconds.values()), 2)
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    rows = [(label, _fmt(report[k]), unit) for k, label, unit in SUMMARY_KEYS if k in report]
    md = [f"# {title}", "", "| quantity | value | unit |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    md += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    md += [f"| total | {sum(seconds.values()):.1f} |", ""]
    md += [f"![{p}]({p})" for p in plots if (folder / p).exists()]
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{padding:4px 10px;"
         "border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>",
         f"<h1>{html.escape(title)}</h1><table><tr><th>quantity</th><th>value</th><th>unit</th></tr>"]
    h += [f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>" for a, b, c in rows]
    h += ["</table><h2>Time per stage</h2><table>"]
    h += [f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in seconds.items()]
    h += ["</table>"]
    for p in plots:
        f = folder / p
        if f.exists():
            b64 = base64.b64encode(f.read_bytes()).decode()
            h.append(f"<h3>{html.escape(f.stem.replace('_', ' '))}</h3><img src='data:image/png;base64,{b64}'>")
    h.append("</body></html>")
    with atomic_path(folder / "report.html") as tmp:
        tmp.write_text("\n".join(h))
    return report
