"""PNG plots of the evaluation metrics (matplotlib, Agg backend; files written atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from forcefield.fileio import atomic_path

from .evaluate import free_energy_surface, h_r, internal_coordinates


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _plt().close(fig)
    return path


def plot_fes(ref_phipsi: np.ndarray, test_phipsi: np.ndarray, path: str | os.PathLike, bins: int = 60,
             temperature: float = 300.0, labels: tuple[str, str] = ("reference", "test"), vmax: float = 8.0) -> Path:
    """Side-by-side φ/ψ free-energy surfaces (kcal/mol) of two (frames, 2) arrays in degrees."""
    return plot_fes_panels([ref_phipsi, test_phipsi], path, bins, temperature, labels, vmax)


def plot_fes_panels(phipsi: list[np.ndarray], path: str | os.PathLike, bins: int = 60, temperature: float = 300.0,
                    labels: tuple[str, ...] | list[str] = (), vmax: float = 8.0) -> Path:
    """φ/ψ free-energy surfaces (kcal/mol) of several (frames, 2) arrays in degrees, side by side."""
    plt = _plt()
    n = len(phipsi)
    labels = list(labels) + [f"set {k + 1}" for k in range(len(labels), n)]
    fig, axs = plt.subplots(1, n, figsize=(5 * n, 4.3), sharey=True, squeeze=False)
    axs = axs[0]
    for ax, pp, lab in zip(axs, phipsi, labels):
        F, e = free_energy_surface(pp, bins, temperature)
        m = ax.pcolormesh(e, e, np.ma.masked_invalid(F).T, vmin=0, vmax=vmax, cmap="viridis")
        ax.set(title=f"{lab} (n={len(pp)})", xlabel="φ (deg)", xlim=(-180, 180), ylim=(-180, 180))
    axs[0].set_ylabel("ψ (deg)")
    fig.colorbar(m, ax=axs, label="F (kcal/mol)")
    return _save(fig, path)


def plot_distributions(ref: np.ndarray, test: np.ndarray, bonds: np.ndarray, path: str | os.PathLike,
                       bins: int = 100, labels: tuple[str, str] = ("reference", "test")) -> Path:
    """Histograms of every bond length, angle and dihedral: reference vs test."""
    plt = _plt()
    ci, ct = internal_coordinates(ref, bonds), internal_coordinates(test, bonds)
    panels = [(k, j) for k in ("bonds", "angles", "dihedrals") for j in range(ci[k].shape[1])]
    ncol = 6
    nrow = max(1, -(-len(panels) // ncol))
    fig, axs = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.0 * nrow), squeeze=False)
    for ax in axs.flat[len(panels):]:
        ax.axis("off")
    for ax, (k, j) in zip(axs.flat, panels):
        conv = (lambda v: v) if k == "bonds" else np.degrees
        a, b = conv(ci[k][:, j]), conv(ct[k][:, j])
        rng = (-180, 180) if k == "dihedrals" else (min(a.min(), np.percentile(b, 0.1)), max(a.max(), np.percentile(b, 99.9)))
        ax.hist(a, bins=bins, range=rng, density=True, histtype="step", label=labels[0])
        ax.hist(b, bins=bins, range=rng, density=True, histtype="step", label=labels[1])
        ax.set_title(f"{k[:-1]} {'-'.join(map(str, ci[k + '_idx'][j]))}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    axs.flat[0].legend(fontsize=7)
    fig.subplots_adjust(hspace=0.55, wspace=0.3)  # (tight_layout costs seconds with many panels)
    return _save(fig, path, dpi=80)


def plot_hr(ref: np.ndarray, test: np.ndarray, path: str | os.PathLike, labels: tuple[str, str] = ("reference", "test")) -> Path:
    """h(r) (density of all pairwise distances) of two trajectories."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for R, lab in zip((ref, test), labels):
        h, e = h_r(R)
        ax.plot(0.5 * (e[1:] + e[:-1]), h, label=lab)
    ax.set(xlabel="r (Å)", ylabel="h(r)")
    ax.legend()
    return _save(fig, path)


def plot_stability(stable_ps: list[float], run_ps: float, path: str | os.PathLike) -> Path:
    """Time each replica stayed stable (bars) against the run length (line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(stable_ps)), stable_ps)
    ax.axhline(run_ps, color="k", lw=0.8, ls="--")
    ax.set(xlabel="replica", ylabel="stable time (ps)")
    return _save(fig, path)


def plot_training(hist: Any, path: str | os.PathLike) -> Path:
    """Train/validation force RMSE per epoch of a :class:`cg.train.TrainResult`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ep = np.arange(1, len(hist.val_rmse) + 1)
    ax.plot(ep, hist.train_rmse, label="train")
    ax.plot(ep, hist.val_rmse, label="validation")
    ax.axhline(hist.prior_val_rmse, color="k", ls="--", lw=0.8, label="priors only")
    ax.set(xlabel="epoch", ylabel="force RMSE (kcal/mol/Å)")
    ax.legend()
    return _save(fig, path)
