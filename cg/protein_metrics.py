"""Protein and peptide observables for CG models, every divergence with its noise floor.

Observables (frames (M, n, 3) Å of beads or atoms): radius of gyration, end-to-end distance, fraction of
native contacts Q (Best, Hummer & Eaton 2013), the Cα distance map, and a 2-D free-energy surface on the
reference's two slowest TICA components (deeptime; features: inverse pairwise distances).

Comparisons take ``(reference, test)``. The noise floor of a divergence is the same divergence between the
first and second half of the reference (its replicas in order): a test cannot be told apart from the
reference below it. Units: Å.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from forcefield.errors import InputError

from .evaluate import _frames, histogram_js, js_divergence


def radius_of_gyration(R: np.ndarray, masses: np.ndarray | None = None) -> np.ndarray:
    """Rg (Å) of every frame; mass-weighted when ``masses`` is given."""
    R = _frames(R, "radius_of_gyration")
    w = np.ones(R.shape[1]) if masses is None else np.asarray(masses, dtype=float)
    w = w / w.sum()
    c = np.einsum("n,mnk->mk", w, R)
    return np.sqrt(np.einsum("n,mn->m", w, ((R - c[:, None]) ** 2).sum(-1)))


def end_to_end(R: np.ndarray, first: int = 0, last: int = -1) -> np.ndarray:
    """Distance (Å) between particles ``first`` and ``last`` in every frame."""
    R = _frames(R, "end_to_end")
    return np.linalg.norm(R[:, last] - R[:, first], axis=-1)


def native_pairs(native: np.ndarray, cutoff: float = 8.0, min_separation: int = 3) -> np.ndarray:
    """Bead pairs (i, j), j − i ≥ ``min_separation``, closer than ``cutoff`` Å in the native frame (n, 3)."""
    native = np.asarray(native, dtype=float)
    i, j = np.triu_indices(len(native), k=min_separation)
    d = np.linalg.norm(native[i] - native[j], axis=-1)
    keep = d < cutoff
    return np.stack([i[keep], j[keep]], 1)


def native_contacts(R: np.ndarray, native: np.ndarray, pairs: np.ndarray | None = None, beta: float = 5.0,
                    lam: float = 1.5) -> np.ndarray:
    """Fraction of native contacts Q per frame: mean over native pairs of 1 / (1 + exp(β (r − λ r₀)))."""
    R = _frames(R, "native_contacts")
    pairs = native_pairs(native) if pairs is None else np.asarray(pairs, dtype=int).reshape(-1, 2)
    if len(pairs) == 0:
        raise InputError("native_contacts: the native structure has no contacts (cutoff/separation too strict)")
    native = np.asarray(native, dtype=float)
    r0 = np.linalg.norm(native[pairs[:, 0]] - native[pairs[:, 1]], axis=-1)
    r = np.linalg.norm(R[:, pairs[:, 0]] - R[:, pairs[:, 1]], axis=-1)
    return (1.0 / (1.0 + np.exp(beta * (r - lam * r0)))).mean(1)


def distance_map(R: np.ndarray) -> np.ndarray:
    """Mean pairwise distance matrix (n, n) Å over frames."""
    R = _frames(R, "distance_map")
    return np.linalg.norm(R[:, :, None] - R[:, None], axis=-1).mean(0)


def distance_map_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean |⟨d_ij⟩_ref − ⟨d_ij⟩_test| (Å) over pairs i < j."""
    a, b = distance_map(ref), distance_map(test)
    if a.shape != b.shape:
        raise InputError(f"distance maps differ in size: {a.shape} vs {b.shape}")
    if len(a) < 2:
        raise InputError("distance_map_error: fewer than 2 particles")
    i, j = np.triu_indices(len(a), k=1)
    return float(np.abs(a[i, j] - b[i, j]).mean())


def _inverse_distances(R: np.ndarray, min_separation: int = 2) -> np.ndarray:
    i, j = np.triu_indices(R.shape[1], k=min_separation)
    if len(i) == 0:
        raise InputError("TICA features: no pairs of particles")
    return 1.0 / np.linalg.norm(R[:, i] - R[:, j], axis=-1)


def tica_projection(ref: np.ndarray, test: np.ndarray, lag: int = 10, dim: int = 2,
                    lengths: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project reference and test frames onto the reference's ``dim`` slowest TICA components.

    ``lengths``: frames of each reference trajectory (TICA's time-lagged pairs never cross trajectories).
    """
    from deeptime.decomposition import TICA

    ref, test = _frames(ref, "TICA reference"), _frames(test, "TICA test")
    Xr, Xt = _inverse_distances(ref), _inverse_distances(test)
    ls = [len(ref)] if lengths is None else [int(c) for c in lengths]
    if sum(ls) != len(ref):
        raise InputError(f"TICA: lengths add up to {sum(ls)}, the reference has {len(ref)} frames")
    trajs = [x for x in np.split(Xr, np.cumsum(ls)[:-1]) if len(x) > lag]
    if not trajs:
        raise InputError(f"TICA: no reference trajectory longer than the lag ({lag} frames)")
    model = TICA(lagtime=lag, dim=dim).fit(trajs).fetch_model()
    return model.transform(Xr), model.transform(Xt)


def fes2d_js(ref: np.ndarray, test: np.ndarray, bins: int = 50) -> float:
    """JS divergence (nats) of two 2-D samples (M, 2) on the reference's grid (±10 % padding)."""
    ref, test = np.asarray(ref, dtype=float), np.asarray(test, dtype=float)
    if len(ref) == 0 or len(test) == 0:
        raise InputError("fes2d_js: an empty sample")
    lo, hi = ref.min(0), ref.max(0)
    pad = 0.1 * np.maximum(hi - lo, 1e-9)
    edges = [np.linspace(lo[k] - pad[k], hi[k] + pad[k], bins + 1) for k in range(2)]
    clip = [np.clip(x, [e[0] for e in edges], [e[-1] - 1e-12 for e in edges]) for x in (ref, test)]
    hr = np.histogram2d(clip[0][:, 0], clip[0][:, 1], bins=edges)[0]
    ht = np.histogram2d(clip[1][:, 0], clip[1][:, 1], bins=edges)[0]
    return js_divergence(hr, ht)


def _halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = len(x) // 2
    if h == 0:
        raise InputError("noise floor: fewer than 2 reference frames")
    return x[:h], x[h:]


def protein_report(ref: np.ndarray, test: np.ndarray, *, native: np.ndarray | None = None, bins: int = 50,
                   tica_lag: int = 10, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """Every protein observable's JS divergence (and the distance-map error), each with its noise floor.

    ``native`` (n, 3): the folded structure for Q (default: the reference frame of smallest Rg).
    """
    ref, test = _frames(ref, "reference"), _frames(test, "test")
    if ref.shape[1:] != test.shape[1:]:
        raise InputError(f"reference has {ref.shape[1]} particles, test {test.shape[1]}")
    obs = {"rg": radius_of_gyration, "end_to_end": end_to_end}
    if native is None:
        native = ref[int(np.argmin(radius_of_gyration(ref)))]
    out: dict[str, Any] = {}
    for name, f in obs.items():
        a, b = f(ref), f(test)
        out[f"{name}_js"] = histogram_js(a, b, bins)
        out[f"{name}_js_floor"] = histogram_js(*_halves(a), bins)
        out[f"{name}_mean_ref"], out[f"{name}_mean_test"] = float(a.mean()), float(b.mean())
    try:
        pairs = native_pairs(native)
        qa, qb = native_contacts(ref, native, pairs), native_contacts(test, native, pairs)
        out["q_js"], out["q_js_floor"] = histogram_js(qa, qb, bins, (0.0, 1.0)), histogram_js(*_halves(qa), bins, (0.0, 1.0))
    except InputError as e:
        out["q_js"] = out["q_js_floor"] = float("nan")
        out.setdefault("nan_reasons", {})["q_js"] = str(e)
    out["distance_map_error"] = distance_map_error(ref, test)
    ra, rb = _halves(ref)
    out["distance_map_error_floor"] = distance_map_error(ra, rb)
    try:
        pr, pt = tica_projection(ref, test, tica_lag, 2, lengths)
        out["tica_js"], out["tica_js_floor"] = fes2d_js(pr, pt, bins), fes2d_js(*_halves(pr), bins)
    except InputError as e:
        out["tica_js"] = out["tica_js_floor"] = float("nan")
        out.setdefault("nan_reasons", {})["tica_js"] = str(e)
    return out
