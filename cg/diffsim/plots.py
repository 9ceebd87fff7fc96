"""PNG plots of g(r) and u(r) (matplotlib, Agg backend; reduced LJ units)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from forcefield.fileio import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rdfs(path: str | Path, r: np.ndarray, curves: dict[str, dict[str, np.ndarray]], title: str = "") -> None:
    """One panel per state: ``curves[state][label] = g`` (label 'target' drawn as a thick grey line)."""
    plt = _plt()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (state, lines) in zip(axes[0], curves.items()):
        for label, g in lines.items():
            kw = dict(color="0.6", lw=3.0) if label == "target" else dict(lw=1.3)
            ax.plot(r, g, label=label, **kw)
        ax.axhline(1.0, color="0.85", lw=0.8, zorder=0)
        ax.set_title(state)
        ax.set_xlabel("r / sigma")
        ax.set_ylabel("g(r)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_potentials(path: str | Path, r: np.ndarray, curves: dict[str, np.ndarray], title: str = "",
                    ylim: tuple[float, float] = (-1.6, 2.0)) -> None:
    """u(r) curves ``{label: u}`` on a common grid (label 'true' drawn as a thick grey line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for label, u in curves.items():
        kw = dict(color="0.6", lw=3.0) if label == "true" else dict(lw=1.3)
        ax.plot(r, u, label=label, **kw)
    ax.axhline(0.0, color="0.85", lw=0.8, zorder=0)
    ax.set_ylim(*ylim)
    ax.set_xlabel("r / sigma")
    ax.set_ylabel("u(r) / epsilon")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
