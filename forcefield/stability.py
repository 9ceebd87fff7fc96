"""The stability rule, written once (Fu et al., TMLR 2023): a trajectory is stable until a bond deviates
from its reference mean length by more than a threshold, or a frame stops being finite.

The threshold is Fu's 0.5 Å, widened per bond to ``widen`` times the largest deviation that the reference
itself shows (large CG beads have soft bonds whose reference fluctuations exceed 0.5 Å; a fixed 0.5 Å would
flag the reference itself). The MD engines stop replicas with it and the evaluation counts with it.
Units: Å.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

FU_THRESHOLD = 0.5  # Å


def bond_lengths(R: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Bond lengths (frames, n_bonds) of frames R (frames, n, 3) for bonds (n_bonds, 2)."""
    b = np.asarray(bonds, dtype=int).reshape(-1, 2)
    return np.linalg.norm(R[..., b[:, 1], :] - R[..., b[:, 0], :], axis=-1)


def reference_bond_lengths(R: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Mean length (Å) of every bond over reference frames."""
    if len(np.asarray(bonds).reshape(-1, 2)) == 0:
        raise InputError("no bonds: the stability rule needs at least one bond")
    if len(R) == 0:
        raise InputError("no reference frames for the bond lengths")
    return bond_lengths(R, bonds).mean(0)


def bond_thresholds(R_ref: np.ndarray, bonds: np.ndarray, base: float = FU_THRESHOLD,
                    widen: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(reference mean lengths, per-bond thresholds) from reference frames: ``max(base, widen·max |r − r0|)``."""
    r0 = reference_bond_lengths(R_ref, bonds)
    dev = np.abs(bond_lengths(R_ref, bonds) - r0).max(0)
    return r0, np.maximum(base, widen * dev)


def first_unstable_frame(R: np.ndarray, bonds: np.ndarray, r0: np.ndarray,
                         threshold: float | np.ndarray = FU_THRESHOLD) -> int | None:
    """Index of the first frame that breaks the rule (a bond past its threshold or a non-finite frame), or None."""
    dev = np.abs(bond_lengths(np.asarray(R, dtype=float), bonds) - np.asarray(r0, dtype=float)[None])
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), dev.shape[1:])
    bad = ~np.isfinite(dev).all(1) | (np.nan_to_num(dev, nan=np.inf) > thr).any(1)
    return int(np.argmax(bad)) if bad.any() else None
