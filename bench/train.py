"""Bench: fit + calibrate + export on 100k rows, and single-trace scoring latency (JSON out).

The reference feature rows are resampled (items drawn with replacement, original item ids kept so
cross-fitting stays grouped) to `--rows` rows. Timed: fitting every panel model's classifier with
its cross-fitted calibration, then the export (ONNX conversion, manifest, parity check). Latency:
one held-out row at a time through the runtime scorer (onnxruntime + numpy calibration) beside
LightGBM's own predict_proba on the same rows; also from token arrays to a policy decision (the
service's hot path: signals_from_arrays -> Scorer.predict -> ThresholdPolicy.decide).

    python bench/train.py [--rows 100000] [--traces data/reference-traces]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from confroute.features import answer_token_slice, signals_from_arrays, token_arrays
from confroute.grading import NumericGrader
from confroute.panel import load_panel
from confroute.policy import ThresholdPolicy
from confroute.scoring import Scorer
from confroute.traces import read_traces
from training.config import TrainConfig
from training.export import export_version
from training.train import Dataset, fit_panel, fit_policy_table, load_dataset, panel_info, split_items


def resample(table: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """About `rows` rows: whole items (all their models' rows) drawn with replacement.

    Each copy is a new item (id "<item>#<k>"): the numbers are for timing only, since copies of
    one question land on both sides of every split.
    """
    per_item = len(table) / table["item_id"].nunique()
    ids = table["item_id"].unique()
    draw = np.random.default_rng(seed).choice(ids, size=int(rows / per_item), replace=True)
    big = table.set_index("item_id").loc[draw].reset_index()  # each draw's rows, in draw order
    sizes = table.groupby("item_id").size().loc[draw].to_numpy()
    big["item_id"] = big["item_id"] + "#" + np.repeat(np.arange(len(draw)), sizes).astype(str)
    return big


def percentiles(fn: Callable[[int], object], n: int) -> dict[str, float]:
    """p50 / p99 of fn(i) in microseconds, after a warm-up."""
    for i in range(min(n, 50)):
        fn(i)
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        times[i] = time.perf_counter_ns() - t
    return {"p50_us": float(np.percentile(times, 50) / 1e3),
            "p99_us": float(np.percentile(times, 99) / 1e3)}


def hot_path(scorer: Scorer, policy: ThresholdPolicy, traces_path: list[Path], n: int) -> dict[str, Any]:
    """Token arrays -> signals -> calibrated p -> decision, one trace at a time (and signals alone)."""
    model = scorer.models[0]
    grader = NumericGrader()
    cases = []
    for t in (t for t in read_traces(traces_path) if t.model == model):
        arr = token_arrays(t.tokens)  # what the service gets from the request's tokens
        ext = grader.extract(arr.text)
        cases.append((arr, answer_token_slice(arr, (ext.start, ext.end) if ext else None),
                      ext is not None, t.finish_reason == "length"))
        if len(cases) == 200:
            break

    def signals(i: int) -> np.ndarray:
        arr, span, found, truncated = cases[i % len(cases)]
        return signals_from_arrays(arr, answer=span, answer_found=found, truncated=truncated)

    def one(i: int) -> object:
        return policy.decide(model, float(scorer.predict(model, signals(i))[0]), 0.5)

    return {**percentiles(one, n), "signals_from_arrays_alone": percentiles(signals, n),
            "mean_tokens": float(np.mean([c[0].logprob.size for c in cases]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--traces", type=Path, nargs="+", default=[Path("data/reference-traces")])
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--latency-rows", type=int, default=2000)
    args = ap.parse_args()
    config = TrainConfig(traces=args.traces, n_jobs=args.n_jobs, bootstrap=0)
    panel = load_panel(config.panel)
    ref = load_dataset(config, panel)
    big = resample(ref.table, args.rows, config.seed)
    data = Dataset(big, ref.features, split_items(big["item_id"], config.test_size, config.seed))
    out: dict[str, Any] = {"rows": len(big), "reference_rows": len(ref.table),
                           "items": int(ref.table["item_id"].nunique()), "n_jobs": args.n_jobs}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fitted = fit_panel(config, data, panel.names)
        t1 = time.perf_counter()
        held = {m: big[(big["model"] == m).to_numpy() & data.test][ref.features].to_numpy(float)
                for m in panel.names}
        policy = fit_policy_table(config, data, fitted, panel.names)
        t2 = time.perf_counter()
        version, diffs = export_version(
            tmp, fitted, held, panel=panel_info(panel), feature_names=ref.features,
            feature_config=config.features.model_dump(), policy=policy, metrics={},
            mlflow_run_id=None, switch=False)
        t3 = time.perf_counter()
        out.update(fit_calibrate_s=t1 - t0, export_with_parity_s=t3 - t2,
                   fit_calibrate_export_s=(t1 - t0) + (t3 - t2), policy_fit_s=t2 - t1,
                   parity_max_abs=max(diffs.values()), parity_rows=sum(map(len, held.values())))
        out["latency"] = latency(Scorer.load(version), fitted, held, args.latency_rows)
        out["latency"]["arrays_to_decision"] = hot_path(
            Scorer.load(version), ThresholdPolicy.from_dict(policy), args.traces, args.latency_rows)
    print(json.dumps(out, indent=2))


def latency(scorer: Scorer, fitted: dict, held: dict, n: int) -> dict[str, Any]:
    """Single-row p50/p99: runtime scorer vs LightGBM's predict_proba, per panel model."""
    out: dict[str, Any] = {}
    for model, clf in fitted.items():
        if clf.kind_ != "lightgbm":
            continue
        rows = np.ascontiguousarray(held[model][:n], dtype=np.float32)
        k = len(rows)
        one = [rows[i : i + 1] for i in range(k)]  # (1, F) float32 views, made before timing
        onnx = percentiles(lambda i, m=model, one=one: scorer.predict(m, one[i % len(one)]), n)
        lgbm = percentiles(
            lambda i, c=clf, one=one: c.estimator_.predict_proba(one[i % len(one)]), n)
        out[model] = {"onnx_scorer": onnx, "lightgbm_predict_proba": lgbm,
                      "p50_ratio_lightgbm_over_onnx": lgbm["p50_us"] / onnx["p50_us"],
                      "p99_ratio_lightgbm_over_onnx": lgbm["p99_us"] / onnx["p99_us"]}
    return out


if __name__ == "__main__":
    main()
