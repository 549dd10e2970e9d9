"""Held-out metrics of a correctness classifier, bootstrap intervals, the raw-signal baseline.

- AUROC: rank-based (ties averaged); NaN when only one class is present.
- Brier: mean (p - y)^2. Log loss: p clipped to [1e-6, 1 - 1e-6].
- ECE: `bins` equal-mass bins (default 10: edges at the deciles of p; tied p share a bin, so
  isotonic plateaus are never split), sum over bins of (bin size / n) * |mean p - share correct|.
- Accuracy: share of rows where (p >= 0.5) equals correctness; base_rate: share correct.
- ECE noise floor: the ECE that perfectly calibrated p would show on these rows (labels drawn
  from p), mean and 95th percentile: on a few hundred rows it is not far below 0.05 by itself.
- Intervals: percentile 95% intervals over `n_boot` row resamples (one row per item per model,
  so resampling rows resamples items).
- Raw signals: each signal alone as a score, its direction fixed on the training rows (never on
  the test rows) and NaN ranked as least confident, so every signal is scored on the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

EPS = 1e-6


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of score s for labels y (Mann-Whitney U)."""
    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bin_index(p: np.ndarray, bins: int = 10) -> np.ndarray:
    """Equal-mass bins: edges at the deciles (for 10) of p; tied values always share a bin."""
    edges = np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]) if len(p) else np.empty(0)
    return np.searchsorted(edges, p, side="right")


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-mass bins of p."""
    idx = bin_index(p, bins)
    gaps = [abs(p[idx == b].mean() - y[idx == b].mean()) * np.sum(idx == b) for b in np.unique(idx)]
    return float(np.sum(gaps) / max(len(y), 1))


def ece_if_calibrated(
    p: np.ndarray, bins: int = 10, n_sim: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Mean and 95th percentile of ECE when labels are drawn from p itself (perfect calibration).

    ECE is biased upward on few rows (about 0.1 for 10 bins of 6 rows even when p is exactly
    right); this noise floor tells a calibration error apart from sampling noise.
    """
    if p.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    sims = [ece((rng.random(p.size) < p).astype(float), p, bins) for _ in range(n_sim)]
    return float(np.mean(sims)), float(np.percentile(sims, 95))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def summary(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Point estimates of every metric on one set of rows."""
    y = np.asarray(y, dtype=np.float64)
    return {
        "auroc": auroc(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece(y, p, bins),
        "log_loss": log_loss(y, p),
        "accuracy": float(np.mean((p >= 0.5) == (y == 1))),
        "base_rate": float(y.mean()) if y.size else float("nan"),
    }


def bootstrap(
    y: np.ndarray, p: np.ndarray, bins: int = 10, n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile 95% interval of each summary metric over row resamples."""
    if n_boot == 0 or y.size == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = [summary(y[i], p[i], bins) for i in rng.integers(0, y.size, (n_boot, y.size))]
    return {k: _interval([d[k] for d in draws]) for k in draws[0]}


def _interval(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def orientation(x: np.ndarray, y: np.ndarray) -> float:
    """+1 if larger values of the signal mean correct on these (training) rows, else -1."""
    a = auroc(y, _oriented(x, 1.0))
    return 1.0 if not np.isfinite(a) or a >= 0.5 else -1.0


def _oriented(x: np.ndarray, sign: float) -> np.ndarray:
    """Signal as a confidence score: sign-corrected, NaN ranked lowest (no evidence)."""
    s = sign * np.asarray(x, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def signal_aurocs(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
    names: Sequence[str],
) -> dict[str, float]:
    """Held-out AUROC of each raw signal alone, oriented on the training rows."""
    out = {}
    for j, name in enumerate(names):
        sign = orientation(X_train[:, j], y_train)
        out[name] = auroc(y_test, _oriented(X_test[:, j], sign))
    return out


def paired_gain(
    y: np.ndarray, p: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC(p) - AUROC(s) on the same rows, and its paired bootstrap 95% interval."""
    gain = auroc(y, p) - auroc(y, s)
    if n_boot == 0:
        return gain, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, (n_boot, y.size))
    draws = [auroc(y[i], p[i]) - auroc(y[i], s[i]) for i in idx]
    lo, hi = _interval(draws)
    return gain, lo, hi


def auroc_interval(
    y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% bootstrap interval of AUROC(s) alone."""
    if n_boot == 0 or y.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    return _interval([auroc(y[i], s[i]) for i in rng.integers(0, y.size, (n_boot, y.size))])


def evaluate(
    y: np.ndarray, p: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
    names: Sequence[str], bins: int = 10, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Every held-out number for one model: metrics, intervals, signal baseline, target verdict."""
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {"n": int(y.size), "n_correct": int(y.sum())}
    out.update(summary(y, p, bins))
    out["ece_if_calibrated"], out["ece_if_calibrated_q95"] = ece_if_calibrated(p, bins, seed=seed)
    for k, (lo, hi) in bootstrap(y, p, bins, n_boot, seed).items():
        out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    signals = signal_aurocs(X_train, y_train, X_test, y, names)
    best = max(signals, key=lambda k: -np.inf if np.isnan(signals[k]) else signals[k])
    j = list(names).index(best)
    s = _oriented(X_test[:, j], orientation(X_train[:, j], y_train))
    gain, lo, hi = paired_gain(y, p, s, n_boot, seed)
    sig_lo, sig_hi = auroc_interval(y, s, n_boot, seed)
    out.update(best_signal=best, best_signal_auroc=signals[best], best_signal_auroc_lo=sig_lo,
               best_signal_auroc_hi=sig_hi, auroc_gain=gain, auroc_gain_lo=lo, auroc_gain_hi=hi,
               signal_auroc=signals)
    out["target"] = verdict(out)
    return out


def verdict(m: dict[str, Any], min_each: int = 30, max_ece: float = 0.05) -> str:
    """The issue's target: ECE <= 0.05 and AUROC >= best raw signal, given 30 of each class."""
    if min(m["n_correct"], m["n"] - m["n_correct"]) < min_each:
        return f"too few (<{min_each} per class)"
    ok_ece = m["ece"] <= max_ece
    ok_auc = m["auroc"] >= m["best_signal_auroc"]
    if ok_ece and ok_auc:
        return "met"
    fails = [t for t, ok in (("ECE", ok_ece), ("AUROC", ok_auc)) if not ok]
    return f"not met ({', '.join(fails)})"
