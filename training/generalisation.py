"""How the router holds up on items and sets it was not fitted on: learning curves and
leave-one-set-out, each a refit of the whole pipeline (classifiers, calibration, policies).

- Learning curve: for each repeat, an item-grouped split holds out `test_size` of the items; the
  pipeline is fitted on the first n training items of a shuffled order (n in `sizes`, "all" =
  every training item) and evaluated on the same held-out items, so the sizes of one repeat
  differ only in what was fitted. APGR of every method per (n, repeat); the table gives the
  mean and the 2.5 / 97.5 percentiles over repeats, and the router's gain over each baseline
  with the share of repeats where it is > 0.
- Leave one set out: fit on every dataset but one, evaluate on the one left out (users' traffic
  is never the training sets).

Both use training.train's fitting functions and training.evaluate's arrays and baselines, so a
number here is what `confroute train` + `confroute evaluate` would give on that split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from confroute.features import FEATURE_NAMES
from confroute.policies import load_policy
from training.config import TrainConfig
from training.eval_arrays import arrays_from_table
from training.evaluate import evaluate_arrays
from training.table import complete_items, item_groups
from training.train import Dataset, fit_panel, fit_policy_table

SIZES: tuple[int | str, ...] = (50, 100, 200, "all")
MAIN = ("router", "single_models", "tuned_on_test", "route_thresholds", "raw_avg_logprob_threshold",
        "fixed_formula", "random_mixing")


def fit_and_score(config: TrainConfig, table: pd.DataFrame, models: list[str],
                  train_items: set[str], test_items: set[str], n_boot: int = 0,
                  features: Sequence[str] = FEATURE_NAMES) -> dict[str, Any]:
    """Fit the pipeline on `train_items`, evaluate on `test_items`: APGR per method."""
    t = table[table["item_id"].isin(train_items | test_items)].reset_index(drop=True)
    data = Dataset(t, list(features), t["item_id"].isin(test_items).to_numpy())
    fitted = fit_panel(config, data, models)
    policy = load_policy(fit_policy_table(config, data, fitted, models))
    held = complete_items(t[data.test], models)

    def predict(model: str, x: np.ndarray) -> np.ndarray:
        return fitted[model].predict_proba(x)[:, 1]

    arrays = arrays_from_table(held, models, list(features), predict, config.features.grader)
    rep = evaluate_arrays(arrays, policy, n_boot)
    apgr = {k: v["apgr"] for k, v in rep["apgr"]["methods"].items()}
    router = next((q for q in rep["curve"] if q["lambda"] == 0.3), None)
    out = {"n_train": len(train_items), "n_test": len(arrays.items), "apgr": apgr,
           "two_calls_at_0.3": router.get("two_or_more_calls") if router else None}
    if n_boot > 0:  # paired bootstrap over the test items of the router's gain per baseline
        out["gain_ci"] = {k: v["ci95"] for k, v in rep["apgr"]["router_gain"].items()}
    return out


def _groups(table: pd.DataFrame) -> pd.Series:
    return item_groups(table.drop_duplicates("item_id").set_index("item_id", drop=False))


def learning_curve(config: TrainConfig, table: pd.DataFrame, models: list[str],
                   sizes: Sequence[int | str] = SIZES, repeats: int = 5, test_size: float = 0.3,
                   seed: int = 0, features: Sequence[str] = FEATURE_NAMES) -> dict[str, Any]:
    """APGR per method against the number of training items, over repeated grouped splits."""
    groups = _groups(complete_items(table, models))
    runs = []
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        keys = rng.permutation(np.unique(groups.to_numpy()))
        n_test = max(1, round(test_size * keys.size))
        test_keys = set(keys[:n_test])
        test = set(groups.index[groups.isin(test_keys)])
        order = [i for k in keys[n_test:] for i in groups.index[groups == k]]
        for size in sizes:
            n = len(order) if size == "all" else min(int(size), len(order))
            got = fit_and_score(config, table, models, set(order[:n]), test, features=features)
            runs.append({"repeat": r, "size": str(size), **got})
    return {"runs": runs, "summary": summarize(runs, "size", [str(s) for s in sizes]),
            "repeats": repeats, "test_size": test_size}


def leave_one_set_out(config: TrainConfig, table: pd.DataFrame, models: list[str],
                      n_boot: int = 200, features: Sequence[str] = FEATURE_NAMES
                      ) -> dict[str, Any]:
    """Fit on every dataset but one, evaluate on the one left out; one run per dataset, the
    router's gains with a paired bootstrap interval over the left-out items."""
    if "dataset" not in table:
        raise ValueError("--leave-one-set-out needs a 'dataset' column naming each item's set; "
                         "the table has none")
    if table["dataset"].isna().any():
        raise ValueError(f"--leave-one-set-out: the 'dataset' column is empty in "
                         f"{int(table['dataset'].isna().sum())} rows; name every item's set")
    full = complete_items(table, models)
    sets = sorted(full["dataset"].unique())
    if len(sets) < 2:  # training on the rest would fit on nothing
        raise ValueError(f"--leave-one-set-out needs items from two datasets or more; these "
                         f"items are all from {sets or 'none'}")
    runs = []
    for left in sets:
        test = set(full.loc[full["dataset"] == left, "item_id"])
        train = set(full.loc[full["dataset"] != left, "item_id"])
        # a question repeated across sets would sit on both sides: drop it from training
        groups = _groups(full)
        shared = set(groups[groups.index.isin(test)])
        train = {i for i in train if groups[i] not in shared}
        runs.append({"left_out": left,
                     **fit_and_score(config, table, models, train, test, n_boot, features)})
    return {"runs": runs, "summary": summarize(runs, "left_out", sets)}


def summarize(runs: list[dict[str, Any]], key: str, order: Sequence[str]) -> list[dict[str, Any]]:
    """Per value of `key`: mean APGR per method with the 2.5-97.5 percentile range over runs,
    and the router's gain over each method (mean, range, 95% t-interval of the mean over runs,
    share of runs with gain > 0)."""
    out = []
    for k in order:
        rs = [r for r in runs if r[key] == k]
        if not rs:
            continue
        row: dict[str, Any] = {key: k, "runs": len(rs), "n_train": int(np.mean(
            [r["n_train"] for r in rs])), "n_test": int(np.mean([r["n_test"] for r in rs]))}
        for m in MAIN:
            vals = np.array([r["apgr"].get(m) for r in rs if r["apgr"].get(m) is not None],
                            dtype=float)
            if not vals.size:
                continue
            row[m] = _stats(vals)
            if m != "router":
                gain = np.array([r["apgr"]["router"] - r["apgr"][m] for r in rs
                                 if r["apgr"].get(m) is not None and
                                 r["apgr"].get("router") is not None], dtype=float)
                row[f"gain_vs_{m}"] = {**_stats(gain), "share_positive": float((gain > 0).mean())}
                if len(rs) == 1 and rs[0].get("gain_ci", {}).get(m):  # one run: its bootstrap
                    row[f"gain_vs_{m}"]["ci95"] = rs[0]["gain_ci"][m]
        out.append(row)
    return out


def _stats(v: np.ndarray) -> dict[str, Any]:
    """Mean, the runs' 2.5-97.5 percentile range, and the 95% t-interval of the mean."""
    from scipy import stats

    lo, hi = np.percentile(v, [2.5, 97.5]) if v.size > 1 else (v[0], v[0])
    out: dict[str, Any] = {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}
    if v.size > 1:
        half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
        out["ci95"] = [float(v.mean() - half), float(v.mean() + half)]
    return out


def run_generalisation(config: TrainConfig, out_dir: Any, curve: bool = True, loso: bool = True,
                       repeats: int = 5, sizes: Sequence[int | str] = SIZES) -> dict[str, Any]:
    """Both analyses on the config's traces, or on its feature table (`table`, the columns
    `train --table` takes); generalisation.json and its figures in out_dir."""
    import json
    from pathlib import Path

    from confroute.panel import load_panel
    from confroute.traces import read_traces
    from training.eval_plots import plot_generalisation
    from training.table import build_table
    from training.train import TrainError, read_feature_table

    panel = load_panel(config.panel)
    features: Sequence[str] = FEATURE_NAMES
    if config.table is not None:
        table, features = read_feature_table(config.table)
    else:
        table = build_table(read_traces(config.traces), panel, config.features)
    absent = [m for m in panel.names if not (table["model"] == m).any()]
    if absent:
        raise TrainError(f"the refits' panel ({config.panel}) has model(s) {absent} with no rows "
                         f"in the data: give --config a config whose panel is the version's")
    quiet = config.model_copy(update={"bootstrap": 0, "figures": False})
    report: dict[str, Any] = {"panel": panel.name, "models": panel.names,
                              "datasets": sorted(table["dataset"].dropna().astype(str).unique())
                              if "dataset" in table else []}
    if curve:
        report["learning_curve"] = learning_curve(quiet, table, panel.names, sizes, repeats,
                                                  config.test_size, config.seed, features)
    if loso:
        report["leave_one_set_out"] = leave_one_set_out(quiet, table, panel.names,
                                                        features=features)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["figures"] = [p.name for p in plot_generalisation(report, out)]
    (out / "generalisation.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    return report
