"""Drift: how recent traffic's signals and p_correct moved away from the training data, per model.

For every panel model and every signal (and p_correct), the population stability index (PSI, over
10 bins at the reference's deciles) and the two-sample Kolmogorov-Smirnov statistic with its
p-value. A signal is flagged, given at least 30 rows on each side, when the KS p-value < 0.01, or
when PSI >= 0.2 (the usual "significant shift" rule of thumb) and PSI is beyond its own sampling
noise: on small samples PSI is large with nothing moved (mean about 1.1 at 30 rows a side, 0.3 at
70, from sparse bins), so its permutation p-value (200 shuffles of the pooled rows, computed when
PSI >= 0.2) must be < 0.01 too. On the labeled part of recent traffic, calibration is checked too
(ECE over 10 equal-mass bins against its noise floor, mean p_correct vs observed accuracy).

`log_drift` is what `confroute drift` runs: recent traffic from the decision log (the signals
logged at decision time, feedback labels where there are any) against the training data (traces
through the shared feature code, or a ready feature table). p_correct on both sides comes from the
served version (`models/current`), so a moved p_correct means moved inputs, not a new version.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from confroute.features import FEATURE_NAMES
from confroute.manifest import FeatureSpec
from confroute.panel import Panel
from confroute.scoring import Scorer
from confroute.traces import read_traces
from training import quality

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
    psi_pvalue: float  # permutation p-value of the PSI (NaN when PSI < PSI_FLAG: not needed)
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


def psi_pvalue(ref: np.ndarray, cur: np.ndarray, value: float, n_perm: int = 200,
               seed: int = 0) -> float:
    """Share of shuffles of the pooled rows whose PSI reaches `value` (add-one smoothed)."""
    pooled = np.concatenate([ref, cur])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        x = rng.permutation(pooled)
        hits += psi(x[: ref.size], x[ref.size :]) >= value
    return (hits + 1) / (n_perm + 1)


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
    psi_p = psi_pvalue(ref, cur, value) if enough and value >= PSI_FLAG else float("nan")
    flagged = enough and ((value >= PSI_FLAG and psi_p < KS_ALPHA) or ks_p < KS_ALPHA)
    return SignalDrift(
        model, signal, int(ref.size), int(cur.size), value, ks_stat, ks_p, psi_p,
        float(ref.mean()) if ref.size else float("nan"),
        float(cur.mean()) if cur.size else float("nan"),
        bool(flagged),
    )


def calibration(p: np.ndarray, label: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """ECE over equal-mass bins, mean predicted vs observed accuracy, on labeled rows.

    Flagged when ECE exceeds the 95th percentile of the ECE that exactly calibrated p would
    show on these rows (labels drawn from p; 200 draws), given at least MIN_ROWS labels.
    """
    ok = np.isfinite(p) & np.isfinite(label)
    p, y = p[ok], label[ok]
    if p.size == 0:
        nan = float("nan")
        return {"n_labeled": 0, "ece": nan, "ece_if_calibrated_q95": nan, "mean_p": nan,
                "accuracy": nan, "flagged": False}
    ece = quality.ece(y, p, bins)
    floor = quality.ece_if_calibrated(p, bins, n_sim=200, seed=0)[1]
    return {"n_labeled": int(p.size), "ece": ece, "ece_if_calibrated_q95": floor,
            "mean_p": float(p.mean()), "accuracy": float(y.mean()),
            "flagged": bool(p.size >= MIN_ROWS and ece > floor)}


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
            "judged": len(ref) >= MIN_ROWS and len(cur) >= MIN_ROWS,
            "signals": [asdict(r) for r in rows],
            "flagged": [r.signal for r in rows if r.flagged],
            "calibration": calibration(p, labels) if labels.size and p.size else None,
        }
    return {"psi_flag": PSI_FLAG, "ks_alpha": KS_ALPHA, "min_rows": MIN_ROWS, "models": out}


def with_p_correct(frame: pd.DataFrame, scorer: Scorer | None) -> pd.DataFrame:
    """The frame with `p_correct` from the scorer per model (unchanged without a scorer)."""
    if scorer is None or frame.empty:
        return frame
    p = np.full(len(frame), np.nan)
    for model in set(frame["model"]) & set(scorer.models):
        idx = (frame["model"] == model).to_numpy()
        p[idx] = scorer.predict(str(model), frame.loc[idx, list(FEATURE_NAMES)].to_numpy(float))
    return frame.assign(p_correct=p)


def reference_frame(path: Path, panel: Panel, spec: FeatureSpec) -> pd.DataFrame:
    """The training data's feature rows: a CSV/Parquet table, or traces through build_table."""
    from training.table import build_table
    from training.train import read_feature_table

    if path.suffix.lower() in {".csv", ".parquet", ".pq"}:
        frame = read_feature_table(path)[0]
        missing = [c for c in ("model", *FEATURE_NAMES) if c not in frame.columns]
        if missing:
            raise ValueError(f"reference {path}: no column {missing[0]!r} ({len(missing)} of the "
                             f"columns drift compares are missing; a `confroute train` feature "
                             f"table or traces are what it reads)")
        return frame
    if not path.exists():
        raise FileNotFoundError(f"reference {path} does not exist (traces or a feature table)")
    table = build_table(read_traces(path), panel, spec)
    if table.empty:
        raise ValueError(f"reference {path}: no traces of the panel's models {panel.names}")
    return table


def log_drift(
    url: str, since: float | None, reference: Path, scorer: Scorer | None, panel: Panel
) -> dict[str, Any]:
    """Drift of the logged traffic since `since` against the reference, per model."""
    from training.inrows import LogError, log_rows, read_log, redact

    recent = log_rows(read_log(url, since), panel)
    if recent.empty:
        raise LogError(f"no logged decisions in {redact(url)}"
                       + (" in the --since window" if since is not None else ""))
    recent["correct"] = [math.nan if c is None else float(c) for c in recent["correct"]]
    spec = scorer.manifest.feature_config if scorer else FeatureSpec()
    ref = with_p_correct(reference_frame(reference, panel, spec), scorer)
    report = drift_report(ref, with_p_correct(recent, scorer))
    report.update(version=scorer.version if scorer else None, reference=str(reference),
                  log=redact(url), since=since, n_recent=len(recent),
                  n_labeled=int(np.isfinite(recent["correct"].to_numpy(float)).sum()))
    return report


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: NaN and inf become null."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float | np.floating) and not math.isfinite(v):
            return None
        return v.item() if isinstance(v, np.generic) else v

    return json.dumps(clean(report), indent=2) + "\n"
