"""Drift: how recent traffic's signals and p_correct moved away from the training data, per model.

For every panel model and every signal (and p_correct), the population stability index (PSI, over
10 bins at the reference's deciles) and the two-sample Kolmogorov-Smirnov statistic with its
p-value. A signal is flagged when PSI >= 0.2 (the usual "significant shift" rule of thumb) or the
KS p-value < 0.01 with at least 30 recent rows. On the labeled part of recent traffic, calibration
is checked too (ECE over 10 equal-mass bins, mean p_correct vs observed accuracy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from confroute.features import FEATURE_NAMES

PSI_FLAG = 0.2
KS_ALPHA = 0.01
MIN_ROWS = 30


@dataclass(frozen=True)
class SignalDrift:
    model: str
    signal: str
    n_reference: int
    n_recent: int
    psi: float
    ks: float
    ks_pvalue: float
    reference_mean: float
    recent_mean: float
    flagged: bool


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `recent` against `reference`, bins at reference quantiles."""
    ref, cur = _finite(reference), _finite(recent)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # a constant reference: shift is all-or-nothing
        return 0.0 if np.allclose(cur, ref[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(ref, edges)[0] / ref.size
    q = np.histogram(cur, edges)[0] / cur.size
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def signal_drift(model: str, signal: str, reference: np.ndarray, recent: np.ndarray) -> SignalDrift:
    """PSI and KS of one signal of one model."""
    ref, cur = _finite(reference), _finite(recent)
    if ref.size and cur.size:
        ks = stats.ks_2samp(ref, cur)
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    else:
        ks_stat, ks_p = float("nan"), float("nan")
    value = psi(ref, cur)
    enough = cur.size >= MIN_ROWS and ref.size >= MIN_ROWS
    flagged = enough and (value >= PSI_FLAG or ks_p < KS_ALPHA)
    return SignalDrift(
        model, signal, int(ref.size), int(cur.size), value, ks_stat, ks_p,
        float(ref.mean()) if ref.size else float("nan"),
        float(cur.mean()) if cur.size else float("nan"),
        bool(flagged),
    )


def calibration(p: np.ndarray, label: np.ndarray, bins: int = 10) -> dict[str, float]:
    """ECE over equal-mass bins, mean predicted vs observed accuracy, on labeled rows."""
    ok = np.isfinite(p) & np.isfinite(label)
    p, y = p[ok], label[ok]
    if p.size == 0:
        nan = float("nan")
        return {"n_labeled": 0, "ece": nan, "mean_p": nan, "accuracy": nan}
    order = np.argsort(p)
    ece = sum(
        abs(p[idx].mean() - y[idx].mean()) * idx.size / p.size
        for idx in np.array_split(order, min(bins, p.size))
        if idx.size
    )
    return {"n_labeled": int(p.size), "ece": float(ece), "mean_p": float(p.mean()),
            "accuracy": float(y.mean())}


def drift_report(reference: pd.DataFrame, recent: pd.DataFrame) -> dict:
    """Per model: signal drift rows, calibration on labeled recent rows, and what is flagged.

    Both frames have `model` and the FEATURE_NAMES columns; `p_correct` is compared when both have
    it; `recent` may have `correct` (NaN where unlabeled) for the calibration check.
    """
    signals = [*FEATURE_NAMES, "p_correct"]
    out: dict[str, dict] = {}
    for model, cur in recent.groupby("model"):
        ref = reference[reference["model"] == model]
        rows = [
            signal_drift(str(model), s, ref[s].to_numpy(float), cur[s].to_numpy(float))
            for s in signals
            if s in ref.columns and s in cur.columns
        ]
        labels = cur["correct"].to_numpy(float) if "correct" in cur.columns else np.array([])
        p = cur["p_correct"].to_numpy(float) if "p_correct" in cur.columns else np.array([])
        out[str(model)] = {
            "n_reference": len(ref),
            "n_recent": len(cur),
            "signals": [asdict(r) for r in rows],
            "flagged": [r.signal for r in rows if r.flagged],
            "calibration": calibration(p, labels) if labels.size and p.size else None,
        }
    return {"psi_flag": PSI_FLAG, "ks_alpha": KS_ALPHA, "min_rows": MIN_ROWS, "models": out}
