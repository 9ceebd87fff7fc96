"""Evaluation metrics: zero for identical inputs, hand-computed cases, φ/ψ against MDAnalysis, plots."""
from __future__ import annotations

import numpy as np
import pytest

from cg.evaluate import (bonded_js, evaluate_pair, fes_js, h_r, h_r_error, histogram_js, js_divergence, phi_psi,
                         stability)

BONDS = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])


def _traj(rng, M=500, n=5):
    return np.cumsum(rng.normal(size=(M, n, 3)) * 0.2 + np.array([1.3, 0.2, 0.0]), axis=1)


def test_js_hand_computed():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))
    assert js_divergence([1, 0], [0, 1], base=2) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4)
    kl_p = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    kl_q = np.log(1 / 0.75)
    assert js_divergence([5, 5], [3, 0]) == pytest.approx(0.5 * (kl_p + kl_q))  # normalised inside
    assert 0.5 * (kl_p + kl_q) == pytest.approx(0.215762, abs=1e-6)
    with pytest.raises(ValueError):
        js_divergence([1, 2], [1, 2, 3])


def test_metrics_zero_for_identical_inputs(rng):
    R = _traj(rng)
    assert histogram_js(R[:, 0, 0], R[:, 0, 0]) == 0.0
    b = bonded_js(R, R, BONDS)
    assert b["all_max"] == 0.0 and len(b["bonds"]) == 4 and len(b["angles"]) == 3 and len(b["dihedrals"]) == 2
    pp = phi_psi(R, (0, 1, 2, 3), (1, 2, 3, 4))
    assert fes_js(pp, pp)["js"] == 0.0
    assert h_r_error(R, R) == 0.0
    out = evaluate_pair(R, R.copy(), BONDS, phi_quad=(0, 1, 2, 3), psi_quad=(1, 2, 3, 4))
    assert out["bonded_js"]["all_max"] == 0.0 and out["fes"]["js"] == 0.0 and out["h_r_error"] == 0.0
    # a different trajectory gives positive values
    R2 = _traj(np.random.default_rng(5))
    assert bonded_js(R, R2, BONDS)["all_mean"] > 0 and fes_js(pp, phi_psi(R2, (0, 1, 2, 3), (1, 2, 3, 4)))["js"] > 0


def test_fes_js_hand_case():
    ref = np.array([[10.0, 10.0]] * 4)                       # all in one 6° bin
    test = np.array([[10.0, 10.0]] * 2 + [[-100.0, 50.0]] * 2)  # half there, half elsewhere
    out = fes_js(ref, test, bins=60)
    assert out["js"] == pytest.approx(0.215762, abs=1e-6)
    assert out["grid"] == "60x60" and out["n_ref"] == 4 and out["n_test"] == 4 and out["bin_deg"] == 6.0


def test_histogram_js_counts_outliers():
    ref = np.linspace(1.0, 2.0, 1000)
    far = np.r_[ref[:500], np.full(500, 50.0)]  # half the test samples far outside the reference range
    assert histogram_js(ref, far) > 0.2


def test_h_r_hand_case():
    a = np.zeros((3, 2, 3))
    a[:, 1, 0] = 1.01
    b = np.zeros((3, 2, 3))
    b[:, 1, 0] = 2.01
    h, e = h_r(a)
    assert h.max() == pytest.approx(50.0) and (h > 0).sum() == 1 and e[1] == pytest.approx(0.02)
    # two disjoint deltas of height 50 on 500 bins: mean |Δh| = 100/500, × 10 Å = 2
    assert h_r_error(a, b) == pytest.approx(2.0)


def test_stability_hand_case():
    R = np.zeros((10, 2, 3))
    R[:, 1, 0] = 1.5
    R[7, 1, 0] = 2.1     # deviates by 0.6 Å at frame 7
    s = stability(R, np.array([[0, 1]]), np.array([1.5]), threshold=0.5, dt_ps=0.1)
    assert not s["stable"] and s["collapse_frame"] == 7 and s["stable_ps"] == pytest.approx(0.7)
    assert s["max_deviation"] == pytest.approx(0.0)
    R[7, 1, 0] = 1.9     # within 0.5 Å: stable
    assert stability(R, np.array([[0, 1]]), np.array([1.5]), 0.5, 0.1)["stable"]
    R[3, 1, 0] = np.nan  # non-finite frame
    assert stability(R, np.array([[0, 1]]), np.array([1.5]), 0.5, 0.1)["collapse_frame"] == 3
    # a run shorter than expected (stopped by the MD engine) is unstable at its end
    assert stability(R[:2], np.array([[0, 1]]), np.array([1.5]), 0.5, 0.1, n_expected=10)["collapse_frame"] == 2


def test_phi_psi_matches_mdanalysis(ala_md, tmp_path):
    """Backbone φ/ψ of alanine dipeptide from atom indices agree with MDAnalysis' Ramachandran analysis."""
    import MDAnalysis as mda
    from MDAnalysis.analysis.dihedrals import Ramachandran

    pdb = tmp_path / "ala.pdb"
    pdb.write_text(str(ala_md.extra["pdb"]))
    u = mda.Universe(str(pdb))
    from MDAnalysis.coordinates.memory import MemoryReader

    u.load_new(ala_md.R[:50].astype(np.float32), format=MemoryReader, order="fac")
    ref = Ramachandran(u.select_atoms("resname ALA")).run().results.angles[:, 0, :]
    ours = phi_psi(ala_md.R[:50], (4, 6, 8, 14), (6, 8, 14, 16))
    d = (ours - ref + 180) % 360 - 180
    assert np.abs(d).max() < 0.01


def test_plots_write_png(rng, tmp_path):
    from cg.plots import plot_distributions, plot_fes, plot_hr, plot_stability

    R, R2 = _traj(rng), _traj(np.random.default_rng(3))
    pp = phi_psi(R, (0, 1, 2, 3), (1, 2, 3, 4))
    for p in (plot_fes(pp, pp, tmp_path / "f.png"), plot_distributions(R, R2, BONDS, tmp_path / "d.png"),
              plot_hr(R, R2, tmp_path / "h.png"), plot_stability([1.0, 2.0], 2.0, tmp_path / "s.png")):
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_metrics_over_nothing_raise_or_are_nan_with_reason(rng):
    """No bonds, no frames, empty histograms, no replicas: an error or NaN with its reason, never 0.0."""
    from forcefield.errors import InputError

    R = _traj(rng, M=50)
    with pytest.raises(InputError, match="no bonds"):
        bonded_js(R, R, np.zeros((0, 2)))
    # two beads, one bond: bond distributions exist, angles and dihedrals do not
    b = bonded_js(R[:, :2], R[:, :2] + 0.1, np.array([[0, 1]]))
    assert b["bonds_mean"] >= 0 and b["all_mean"] == b["bonds_mean"]
    for k in ("angles_mean", "angles_max", "dihedrals_mean", "dihedrals_max"):
        assert np.isnan(b[k]) and "no " in b["nan_reasons"][k]
    with pytest.raises(InputError, match="no samples"):
        histogram_js(np.array([]), np.ones(5))
    pp = phi_psi(R, (0, 1, 2, 3), (1, 2, 3, 4))
    with pytest.raises(InputError, match="test φ/ψ histogram is empty"):
        fes_js(pp, np.full((10, 2), np.nan))
    with pytest.raises(InputError, match="empty"):
        fes_js(np.zeros((0, 2)), pp)
    with pytest.raises(InputError, match="no bonds"):
        stability(R, np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(InputError, match="frame"):
        stability(R[:0], BONDS, np.ones(4))
    with pytest.raises(InputError, match="test_runs is empty"):
        evaluate_pair(R, R, BONDS, test_runs=[])
    # a replica that produced no frame counts as unstable, not as a missing run
    out = evaluate_pair(R, R, BONDS, test_runs=[R, R[:0]], threshold=10.0)["stability"]
    assert out["n_runs"] == 2 and out["n_stable"] == 1 and out["min_stable_ps"] == 0.0
