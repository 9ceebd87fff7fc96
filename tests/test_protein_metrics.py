"""Protein observables: known values, invariances, TICA separating a slow two-state process, noise floors."""
from __future__ import annotations

import numpy as np
import pytest

from cg.protein_metrics import (distance_map_error, end_to_end, native_contacts, native_pairs, protein_report,
                                radius_of_gyration, tica_projection)
from forcefield import InputError
from forcefield.geometry import random_rotation


def chain(n=10, bond=3.8, rng=None, noise=0.0):
    x = np.zeros((n, 3))
    x[:, 0] = np.arange(n) * bond
    if rng is not None:
        x = x + noise * rng.normal(size=x.shape)
    return x


def test_rg_and_end_to_end_known_values_and_invariance(rng):
    pts = rng.normal(size=(200, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts = 2.5 * np.concatenate([pts, -pts])  # centred exactly at the origin, every point 2.5 Å from it
    assert radius_of_gyration(pts)[0] == pytest.approx(2.5, rel=1e-12)
    x = chain(10)
    assert end_to_end(x)[0] == pytest.approx(9 * 3.8)
    Q = random_rotation(rng)
    y = x @ Q.T + np.array([1.0, -2.0, 3.0])
    assert radius_of_gyration(y)[0] == pytest.approx(radius_of_gyration(x)[0])
    assert end_to_end(y)[0] == pytest.approx(end_to_end(x)[0])


def test_native_contacts_one_at_native_zero_when_unfolded():
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    hairpin = np.stack([5 * np.cos(t), 5 * np.sin(t), np.zeros_like(t)], 1)  # a closed ring: many contacts
    pairs = native_pairs(hairpin, cutoff=8.0, min_separation=3)
    assert len(pairs) > 0
    assert native_contacts(hairpin, hairpin, pairs)[0] > 0.99
    assert native_contacts(chain(12, 3.8), hairpin, pairs)[0] < 0.2
    with pytest.raises(InputError, match="no contacts"):
        native_contacts(hairpin, hairpin, np.zeros((0, 2), int))


def test_distance_map_error_is_zero_for_same_and_exact_for_scaled(rng):
    R = np.stack([chain(8, rng=rng, noise=0.3) for _ in range(20)])
    assert distance_map_error(R, R) == 0.0
    assert distance_map_error(R, 1.1 * R) == pytest.approx(0.1 * distance_map_error(R, 0 * R), rel=1e-10)
    with pytest.raises(InputError):
        distance_map_error(R[:, :1], R[:, :1])


def two_state(n_frames, p_open, rng, tau=50):
    """A 6-bead chain whose end bead hops slowly between a closed and an open state (populations set by p_open)."""
    s, out = rng.random() < p_open, []
    for _ in range(n_frames):
        if rng.random() < 1.0 / tau:
            s = rng.random() < p_open
        x = chain(6, 3.8, rng, 0.15)
        x[-1] = x[-2] + (np.array([3.8, 0, 0]) if s else np.array([-1.5, 3.5, 0.0])) + 0.15 * rng.normal(size=3)
        out.append(x)
    return np.array(out)


def test_tica_finds_the_slow_process_and_floor_is_below_a_real_difference(rng):
    ref = two_state(4000, 0.5, rng)
    same = two_state(4000, 0.5, rng)
    other = two_state(4000, 0.1, rng)
    pr, _ = tica_projection(ref, same, lag=10)
    open_ = np.linalg.norm(ref[:, -1] - ref[:, -3], axis=-1) > 6.0
    assert abs(np.corrcoef(pr[:, 0], open_)[0, 1]) > 0.9  # the slowest component is the open/closed hop
    r_same = protein_report(ref, same, tica_lag=10, bins=30)
    r_other = protein_report(ref, other, tica_lag=10, bins=30)
    assert r_other["tica_js"] > 3 * max(r_same["tica_js"], r_same["tica_js_floor"])
    assert r_other["end_to_end_js"] > r_same["end_to_end_js"]
    for k in ("rg_js", "end_to_end_js", "q_js", "tica_js", "distance_map_error"):
        assert np.isfinite(r_same[k]) and f"{k}_floor" in r_same


def test_empty_inputs_raise():
    with pytest.raises(InputError):
        radius_of_gyration(np.zeros((0, 5, 3)))
    with pytest.raises(InputError):
        protein_report(np.zeros((10, 5, 3)), np.zeros((10, 4, 3)))
