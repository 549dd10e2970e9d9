"""Figures of a training run as PNG (matplotlib's object API on the Agg canvas; no pyplot state).

- reliability.png: per model, mean predicted P(correct) vs share correct in equal-mass bins.
- signals_<model>.png: each signal's histogram for correct vs incorrect answers (training rows).
- importances.png: per model, LightGBM gain or |standardised logistic coefficient| per feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.quality import bin_index


def _save(fig: Figure, path: Path, tight: bool = True) -> Path:
    FigureCanvasAgg(fig)
    if tight:  # costly with many axes; the signal grid uses fixed spacing instead
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def reliability(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 10
) -> Path:
    """Reliability diagram per model from held-out (correct, p) pairs, ECE's equal-mass bins."""
    fig = Figure(figsize=(4.2 * len(results), 4.2))
    for i, (model, (y, p)) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        idx = bin_index(p, bins)
        mean_p = [float(p[idx == b].mean()) for b in np.unique(idx)]
        share = [float(np.mean(y[idx == b])) for b in np.unique(idx)]
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        ax.plot(mean_p, share, marker="o")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(correct)",
               ylabel="share correct", title=f"{model} (n={len(y)})")
    return _save(fig, path)


def signal_histograms(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], path: Path, title: str
) -> Path:
    """One histogram per signal (share of each class), correct vs incorrect, finite values."""
    cols = 5
    rows = int(np.ceil(len(names) / cols))
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows))
    y = np.asarray(y, dtype=bool)
    for j, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, j + 1)
        x = X[:, j]
        finite = np.isfinite(x)
        if finite.any():
            edges = np.histogram_bin_edges(x[finite], bins=20)
            for label, mask in (("correct", y), ("incorrect", ~y)):
                counts, _ = np.histogram(x[finite & mask], bins=edges)
                if counts.sum():  # stairs: two artists per axes, not 40 bar patches
                    ax.stairs(counts / counts.sum(), edges, label=label, fill=True, alpha=0.5)
        ax.set_title(f"{name} ({int(finite.sum())} finite)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.locator_params(axis="x", nbins=3)
        ax.set_yticks([])
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.03, right=0.98, bottom=0.06, top=0.9, hspace=0.55, wspace=0.15)
    return _save(fig, path, tight=False)


def importances(values: Mapping[str, np.ndarray], names: Sequence[str], path: Path) -> Path:
    """Horizontal bars of each model's feature importances (shares of its total)."""
    fig = Figure(figsize=(4.2 * len(values), 0.28 * len(names) + 1.2))
    for i, (model, v) in enumerate(values.items()):
        ax = fig.add_subplot(1, len(values), i + 1)
        share = v / v.sum() if v.sum() > 0 else v
        ax.barh(np.arange(len(names)), share)
        ax.set_yticks(np.arange(len(names)), labels=list(names) if i == 0 else [], fontsize=7)
        ax.invert_yaxis()
        ax.set(title=model, xlabel="share of importance")
    return _save(fig, path)
