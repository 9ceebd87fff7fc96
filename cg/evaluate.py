"""Evaluation metrics for CG (or any) trajectories; every function takes plain arrays of frames.

Conventions
-----------
* Trajectories are (frames, n, 3) arrays in Å (any frames: CG MD, mapped reference, AA MD).
* Jensen–Shannon divergence ``JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q)/2``, on histograms, in nats
  (natural log; maximum ln 2 ≈ 0.693). Pass ``base=2`` for bits (maximum 1).
* Bonded distributions: histograms of each bond length, angle and dihedral over a range set by the
  reference (min/max padded by 10 %; dihedrals on (-π, π]); test values outside the range are counted in
  the edge bins, so outliers raise the divergence instead of vanishing.
* φ/ψ free-energy surface: 2D histogram on a ``bins × bins`` grid over (-180°, 180°]²,
  ``F = -kT ln p`` (kcal/mol, minimum 0); its JS divergence is between the two normalised histograms.
* Stability (Fu et al., TMLR 2023): a run collapses at the first frame where any bond length deviates by
  more than ``threshold`` (0.5 Å) from its reference mean length.
* h(r) (MDsim definition): normalised histogram (density) of all pairwise distances, 500 bins on (0, 10] Å;
  error = mean |h_ref − h_test| × 10 Å (= ∫|Δh| dr, an L1 distance between the densities).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from forcefield.errors import InputError
from forcefield.stability import bond_lengths, first_unstable_frame, reference_bond_lengths  # noqa: F401
from forcefield.geometry import angles as _angles
from forcefield.geometry import dihedrals as _dihedrals
from forcefield.units import KB_KCAL

from .priors import angle_triples, dihedral_quads


def _frames(R: np.ndarray, what: str = "trajectory") -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[-1] != 3 or len(R) == 0:
        raise InputError(f"{what} must be (frames, n, 3) with at least one frame, got shape {R.shape}")
    return R


# ----------------------------------------------------------------------------- divergences
def js_divergence(p: np.ndarray, q: np.ndarray, base: float = np.e) -> float:
    """Jensen–Shannon divergence between two histograms (any shape; normalised here)."""
    p = np.asarray(p, dtype=float).ravel()
    q = np.asarray(q, dtype=float).ravel()
    if p.shape != q.shape:
        raise InputError(f"histograms differ in size: {p.size} vs {q.size}")
    if p.sum() <= 0 or q.sum() <= 0:
        raise InputError("empty histogram")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        k = a > 0
        return float((a[k] * np.log(a[k] / m[k])).sum())

    return max(0.0, 0.5 * (kl(p) + kl(q))) / np.log(base)


def histogram_js(ref: np.ndarray, test: np.ndarray, bins: int = 100, range_: tuple[float, float] | None = None,
                 base: float = np.e) -> float:
    """JS divergence between the histograms of two 1D samples on a common grid (reference range by default)."""
    ref, test = np.asarray(ref, dtype=float).ravel(), np.asarray(test, dtype=float).ravel()
    if ref.size == 0 or test.size == 0:
        raise InputError(f"histogram_js: no samples (reference {ref.size}, test {test.size})")
    if range_ is None:
        lo, hi = ref.min(), ref.max()
        pad = 0.1 * max(hi - lo, 1e-6)
        range_ = (lo - pad, hi + pad)
    eps = 1e-9 * (range_[1] - range_[0])
    hr, e = np.histogram(np.clip(ref, range_[0], range_[1] - eps), bins=bins, range=range_)
    ht, _ = np.histogram(np.clip(test, range_[0], range_[1] - eps), bins=e)
    return js_divergence(hr, ht, base)


# ----------------------------------------------------------------------------- bonded distributions
def internal_coordinates(R: np.ndarray, bonds: np.ndarray) -> dict[str, np.ndarray]:
    """Bond lengths (Å), angles and dihedrals (radians) of every frame: (frames, n_terms) each,
    plus the index lists under ``*_idx``."""
    R = _frames(R)
    b = np.asarray(bonds, dtype=int).reshape(-1, 2)
    a, d = angle_triples(b), dihedral_quads(b)
    return {"bonds": np.linalg.norm(R[:, b[:, 1]] - R[:, b[:, 0]], axis=-1), "angles": _angles(R, a),
            "dihedrals": _dihedrals(R, d), "bonds_idx": b, "angles_idx": a, "dihedrals_idx": d}


def bonded_js(ref: np.ndarray, test: np.ndarray, bonds: np.ndarray, bins: int = 100, base: float = np.e) -> dict[str, Any]:
    """JS divergence of every bond-length, angle and dihedral distribution (test vs reference).

    Returns per-kind lists and their mean and max (``{"bonds": [...], "bonds_mean": .., "bonds_max": .., ...}``)
    and ``"all_mean"``/``"all_max"`` over every term. A kind without terms (no angles in a two-bead
    molecule) has NaN mean and max, with the reason under ``"nan_reasons"``; no bonds at all is an error.
    """
    if len(np.asarray(bonds).reshape(-1, 2)) == 0:
        raise InputError("bonded_js: no bonds, so no bonded distributions to compare")
    ci, ct = internal_coordinates(ref, bonds), internal_coordinates(test, bonds)
    out: dict[str, Any] = {"bins": bins, "n_ref": len(ci["bonds"]), "n_test": len(ct["bonds"]), "nan_reasons": {}}
    every = []
    for kind in ("bonds", "angles", "dihedrals"):
        vals = []
        for k in range(ci[kind].shape[1]):
            rng = (-np.pi, np.pi) if kind == "dihedrals" else None
            vals.append(histogram_js(ci[kind][:, k], ct[kind][:, k], bins, rng, base))
        out[kind] = vals
        out[f"{kind}_mean"] = float(np.mean(vals)) if vals else float("nan")
        out[f"{kind}_max"] = float(np.max(vals)) if vals else float("nan")
        if not vals:
            out["nan_reasons"][f"{kind}_mean"] = out["nan_reasons"][f"{kind}_max"] = f"no {kind} in the topology"
        every += vals
    out["all_mean"] = float(np.mean(every))
    out["all_max"] = float(np.max(every))
    return out


# ----------------------------------------------------------------------------- phi/psi free energy
def phi_psi(R: np.ndarray, phi_quad: tuple[int, int, int, int], psi_quad: tuple[int, int, int, int]) -> np.ndarray:
    """(frames, 2) backbone φ, ψ in degrees from the given index quadruples (atoms or beads)."""
    R = _frames(R)
    d = _dihedrals(R, np.array([phi_quad, psi_quad]))
    return np.degrees(d)


def fes_histogram(phipsi: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """2D counts (bins, bins) of (φ, ψ) in degrees on (-180, 180]² and the bin edges."""
    pp = np.asarray(phipsi, dtype=float).reshape(-1, 2)
    e = np.linspace(-180.0, 180.0, bins + 1)
    h, _, _ = np.histogram2d(pp[:, 0], pp[:, 1], bins=[e, e])
    return h, e


def free_energy_surface(phipsi: np.ndarray, bins: int = 60, temperature: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """F(φ, ψ) = -kT ln p in kcal/mol (minimum 0, +inf where empty) and the edges (degrees)."""
    h, e = fes_histogram(phipsi, bins)
    with np.errstate(divide="ignore"):
        F = -KB_KCAL * temperature * np.log(h / h.sum())
    return F - F[np.isfinite(F)].min(), e


def fes_js(ref_phipsi: np.ndarray, test_phipsi: np.ndarray, bins: int = 60, base: float = np.e) -> dict[str, Any]:
    """JS divergence between two φ/ψ distributions on a ``bins × bins`` grid, with grid and sample sizes.

    Raises :class:`InputError` when either side has no frame with finite angles.
    """
    hr, e = fes_histogram(ref_phipsi, bins)
    ht, _ = fes_histogram(test_phipsi, bins)
    for name, h in (("reference", hr), ("test", ht)):
        if h.sum() == 0:
            raise InputError(f"fes_js: the {name} φ/ψ histogram is empty (no frames with finite angles)")
    return {"js": js_divergence(hr, ht, base), "grid": f"{bins}x{bins}", "bin_deg": 360.0 / bins,
            "n_ref": int(hr.sum()), "n_test": int(ht.sum()), "base": "nats" if base == np.e else f"log{base:g}"}


# ----------------------------------------------------------------------------- stability
def stability(R: np.ndarray, bonds: np.ndarray, ref_lengths: np.ndarray, threshold: float | np.ndarray = 0.5,
              dt_ps: float = 1.0, n_expected: int | None = None) -> dict[str, Any]:
    """Fu et al. stability of one trajectory (frames, n, 3): the first frame where any bond deviates by more
    than ``threshold`` Å from its reference mean length (or a non-finite frame).

    Returns ``stable`` (bool), ``collapse_frame`` (None if stable), ``stable_ps`` (time stable, frames × dt_ps),
    ``max_deviation`` (Å, over the stable part). With ``n_expected``, a run with fewer frames (one stopped
    early by the MD engine, frames before the stop kept) collapses at its end.
    """
    R = _frames(R)
    b = np.asarray(bonds, dtype=int).reshape(-1, 2)
    if len(b) == 0:
        raise InputError("stability: no bonds, so the bond-deviation rule cannot be applied")
    if np.size(ref_lengths) != len(b):
        raise InputError(f"stability: {np.size(ref_lengths)} reference lengths for {len(b)} bonds")
    k = first_unstable_frame(R, b, ref_lengths, threshold)
    dev = np.abs(bond_lengths(R, b) - np.asarray(ref_lengths, dtype=float)[None])
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), dev.shape[1:])
    if k is None and n_expected is not None and len(R) < n_expected:
        k = len(R)
    good = dev[: (k if k is not None else len(dev))]
    return {"stable": k is None, "collapse_frame": k, "stable_ps": (len(R) if k is None else k) * dt_ps,
            "max_deviation": float(good.max()) if good.size else float("nan"),
            "threshold": thr.tolist() if thr.ndim else float(thr)}



# ----------------------------------------------------------------------------- h(r)
def h_r(R: np.ndarray, bins: int = 500, r_max: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram of all pairwise distances (i < j) over all frames, on (0, r_max] Å; returns (h, edges)."""
    R = _frames(R)
    i, j = np.triu_indices(R.shape[1], k=1)
    h = np.zeros(bins)
    e = np.linspace(0.0, r_max, bins + 1)
    for s in range(0, len(R), 2000):  # chunks keep memory small
        d = np.linalg.norm(R[s:s + 2000, i] - R[s:s + 2000, j], axis=-1).ravel()
        h += np.histogram(d, bins=e)[0]
    if h.sum() == 0:
        raise InputError(f"no pairwise distance below {r_max} Å")
    return h / (h.sum() * (e[1] - e[0])), e


def h_r_error(ref: np.ndarray, test: np.ndarray, bins: int = 500, r_max: float = 10.0) -> float:
    """MDsim h(r) error: mean |h_ref − h_test| × r_max (defaults: 500 bins on (0, 10] Å)."""
    return float(np.abs(h_r(ref, bins, r_max)[0] - h_r(test, bins, r_max)[0]).mean() * r_max)


# ----------------------------------------------------------------------------- all together
def evaluate_pair(ref: np.ndarray, test: np.ndarray, bonds: np.ndarray, *, phi_quad: tuple | None = None,
                  psi_quad: tuple | None = None, fes_bins: int = 60, bins: int = 100, threshold: float = 0.5,
                  test_dt_ps: float = 1.0, test_runs: list[np.ndarray] | None = None,
                  run_frames: int | None = None) -> dict[str, Any]:
    """Every metric of ``test`` frames against ``ref`` frames (both (frames, n, 3) Å, same particles).

    ``test_runs`` (list of per-replica trajectories) is used for stability; by default ``test`` is one run;
    ``run_frames`` is the length each run should have (shorter runs were stopped and count as unstable).
    φ/ψ metrics are computed when both quadruples are given.
    """
    ref, test = _frames(ref, "reference"), _frames(test, "test trajectory")
    if ref.shape[1:] != test.shape[1:]:
        raise InputError(f"reference has {ref.shape[1]} particles, test has {test.shape[1]}")
    out: dict[str, Any] = {"bonded_js": bonded_js(ref, test, bonds, bins), "h_r_error": h_r_error(ref, test)}
    r0 = reference_bond_lengths(ref, bonds)
    runs = test_runs if test_runs is not None else [test]
    if len(runs) == 0:
        raise InputError("evaluate_pair: test_runs is empty (no replica to count as stable or not)")
    st = [stability(r, bonds, r0, threshold, test_dt_ps, run_frames) if len(r) else
          {"stable": False, "stable_ps": 0.0} for r in runs]
    out["stability"] = {"n_runs": len(runs), "n_stable": int(sum(s["stable"] for s in st)),
                        "min_stable_ps": float(min(s["stable_ps"] for s in st)),
                        "mean_stable_ps": float(np.mean([s["stable_ps"] for s in st])),
                        "threshold": threshold}
    if phi_quad is not None and psi_quad is not None:
        out["fes"] = fes_js(phi_psi(ref, phi_quad, psi_quad), phi_psi(test, phi_quad, psi_quad), fes_bins)
    return out
