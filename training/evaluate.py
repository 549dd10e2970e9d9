"""Offline evaluation: replay the cascade at every λ on held-out traces, beside every baseline.

Every method is a set of (accuracy, cost) operating points on the same items; cost is the mean
per-item cost of the models called, relative to always calling the last panel model (per-token
prices from the version's panel config x the tokens each trace measured).

APGR and the cost to reach 50% / 80% of the gap are defined in APGR_DEFINITION (also written
into every report).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from confroute.cascade import CascadePolicy
from confroute.features import FEATURE_NAMES
from confroute.formula import formula_score
from confroute.looper import HybridWeights
from confroute.manifest import Manifest
from confroute.panel import Cost, LlamaCppModel, Panel, Prompt
from confroute.policies import load_policy
from confroute.policy import ThresholdPolicy
from confroute.scoring import Scorer
from confroute.traces import read_traces
from training.cost_curves import (
    Curve,
    apgr_gain,
    apgr_table,
    match_best_single,
    mixing_curve,
    oracle,
    oracle_bound,
    router_vs_baselines,
)
from training.eval_arrays import EvalArrays, arrays_from_table
from training.eval_plots import plot_report
from training.export import HELDOUT_ITEMS, TRAINING_ITEMS
from training.fit_cascade import Replayed, first_models, replay_cascade
from training.fit_policy import Outcome, fit_policy, replay
from training.table import build_table, complete_items

COST_SOURCE = "panel config per-token prices x measured tokens"
HYBRID_WEIGHTS = {"logprob_weight": 0.5, "margin_weight": 0.5}

BASELINES = ("single_models", "random_mixing", "raw_avg_logprob_threshold", "fixed_formula",
             "fixed_formula_any_route")
DESCRIPTIONS = {
    "single_models": "each model alone",
    "random_mixing": "a share w of items to the strongest model, the rest to the cheapest",
    "raw_avg_logprob_threshold": "one threshold on raw avg_logprob for every model, swept",
    "fixed_formula": "hybrid of clip((lp + 3) / 3, 0, 1) and 1 - exp(-margin / 3), one threshold "
                     "for every model, swept",
    "fixed_formula_any_route": "the fixed formula's threshold sweep on every route of 2+ panel "
                               "models, pooled (an ablation: route choice without the classifier)",
    "route_thresholds": "the earlier policy: one route and per-model thresholds per λ, grid-searched "
                        "on the same training rows",
    "tuned_on_test": "a threshold cascade tuned on the evaluated items themselves: one route and "
                     "per-model thresholds on calibrated p per λ, grid-searched on these items' "
                     "outcomes (optimistic: the bar a cascade tuned in hindsight sets)",
    "column_threshold": "one threshold on a named confidence column (--baseline-column) for every "
                        "model of the panel route, swept over its quantiles",
    "oracle": "cheapest correct model (else the last model's cost); points: the best accuracy "
              "any router can reach at each cost",
}


def fixed_formula_score(avg_logprob: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """The open-source cascade's hybrid confidence: mean of clip((lp+3)/3) and 1 - exp(-m/3),
    computed by the same function the service uses for a looper-style config."""
    return np.asarray(formula_score("hybrid", avg_logprob, margin, HybridWeights(**HYBRID_WEIGHTS)))


def _curve(outs: Sequence[Outcome | Replayed], base: float, extras: Sequence[dict[str, Any]]) -> Curve:
    """Operating points from replays, keeping each item's outcome for the bootstrap."""
    correct = np.array([o.correct for o in outs], dtype=float)
    cost = np.array([o.cost for o in outs], dtype=float) / base
    points = [{**e, "accuracy": float(c.mean()), "cost": float(k.mean())}
              for e, c, k in zip(extras, correct, cost, strict=True)]
    return Curve(points, correct, cost)


def router_curve(a: EvalArrays, policy: Any, base: float) -> Curve:
    """Replay the policy at each grid λ: accuracy, cost, who answered, who was called."""
    if isinstance(policy, CascadePolicy):
        return cascade_curve(a, policy, base)
    outs, extras = [], []
    for row in policy.rows:
        route = [a.models.index(m) for m in row.route]
        p = a.route_p(route) if a.route_p else a.p
        out = replay(p, a.correct, a.cost, route, [row.thresholds[m] for m in row.route[:-1]])
        outs.append(out)
        extras.append({
            "lambda": row.lam, "route": list(row.route),
            "answered": {m: float((out.answered_by == j).mean()) for j, m in enumerate(a.models)},
            "calls": {m: float(out.calls[:, j].mean()) for j, m in enumerate(a.models)},
            "fitted_accuracy": row.accuracy, "fitted_cost": row.cost})
    return _curve(outs, base, extras)


def cascade_curve(a: EvalArrays, policy: CascadePolicy, base: float) -> Curve:
    """The cascade policy replayed at each grid λ, as the service runs it."""
    outs, extras = [], []
    span = policy.meta.get("query_range")
    first: np.ndarray | None = None
    for row in policy.rows:  # a question's first model: no dearer than at a lower λ (the service)
        own = first_models(row, a.models, a.query, span, len(a.items))
        first = own if first is None else np.minimum(first, own)
        out = replay_cascade(row, a.models, lambda s: a.p_after(s[-1], s[:-1]), a.correct,
                             a.cost, a.query, span, first)
        outs.append(out)
        two = float((out.calls.sum(1) >= 2).mean())
        extras.append({
            "lambda": row.lam, "route": policy.route(row.lam),
            "answered": {m: float((out.answered_by == j).mean()) for j, m in enumerate(a.models)},
            "calls": {m: float(out.calls[:, j].mean()) for j, m in enumerate(a.models)},
            "two_or_more_calls": two, "fitted_accuracy": row.accuracy, "fitted_cost": row.cost})
    return _curve(outs, base, extras)


def threshold_curve(
    score: np.ndarray, a: EvalArrays, base: float, route: Sequence[int] | None = None
) -> Curve:
    """One global threshold on `score` for every non-final route model, swept over its quantiles."""
    route = list(range(len(a.models))) if route is None else list(route)
    pooled = score[:, route[:-1]][~np.isnan(score[:, route[:-1]])]
    taus = np.unique(np.quantile(pooled, np.linspace(0, 1, 101), method="nearest")) \
        if pooled.size else np.zeros(1)
    taus = np.append(taus, taus[-1] + 1.0)  # above every score: always escalate
    outs = [replay(score, a.correct, a.cost, route, [t] * (len(route) - 1)) for t in taus]
    names = [a.models[j] for j in route]
    return _curve(outs, base, [{"threshold": float(t), "route": names} for t in taus])


def any_route_curve(score: np.ndarray, a: EvalArrays, base: float) -> Curve:
    """The threshold sweep on every route of two or more panel models (in panel order), pooled."""
    m = len(a.models)
    curves = [threshold_curve(score, a, base, r) for k in range(2, m + 1)
              for r in itertools.combinations(range(m), k)]
    return Curve([q for c in curves for q in c.points], np.vstack([c.correct for c in curves]),
                 np.vstack([c.cost for c in curves]))


def single_models(a: EvalArrays, base: float) -> Curve:
    """Each panel model answering every item alone."""
    correct, cost = a.correct.T.astype(float), a.cost.T / base
    points = [{"model": m, "accuracy": float(correct[j].mean()), "cost": float(cost[j].mean())}
              for j, m in enumerate(a.models)]
    return Curve(points, correct, cost)


def evaluate_arrays(a: EvalArrays, policy: Any, n_boot: int = 200,
                    column: tuple[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The report's numbers: router curve, baselines, APGR, oracle bound and targets; `column`:
    (name, (n_items, M) scores) for the one-threshold baseline on a named column."""
    base = float(a.cost[:, -1].mean())
    singles = single_models(a, base)
    fixed = fixed_formula_score(a.avg_logprob, a.margin)
    curves = {"router": router_curve(a, policy, base), "single_models": singles,
              "random_mixing": mixing_curve(singles)}
    names = ["single_models", "random_mixing"]
    if np.isfinite(a.avg_logprob).any():  # a user's table may not have these signals
        curves["raw_avg_logprob_threshold"] = threshold_curve(a.avg_logprob, a, base)
        names.append("raw_avg_logprob_threshold")
    if np.isfinite(fixed).any():
        curves["fixed_formula"] = threshold_curve(fixed, a, base)
        curves["fixed_formula_any_route"] = any_route_curve(fixed, a, base)
        names += ["fixed_formula", "fixed_formula_any_route"]
    if column is not None and np.isfinite(column[1]).any():
        curves["column_threshold"] = threshold_curve(column[1], a, base)
        names.append("column_threshold")
    earlier = policy.meta.get("route_thresholds") if isinstance(policy, CascadePolicy) else None
    if earlier:  # the previous policy, fitted on the same rows: the gain of the new one
        curves["route_thresholds"] = router_curve(a, ThresholdPolicy.from_dict(earlier), base)
        names.append("route_thresholds")
    if np.isfinite(a.p).any():
        hindsight = fit_policy(a.p, a.correct, a.cost, a.models, list(policy.lambdas), n_bootstrap=0,
                               route_p=a.route_p)
        curves["tuned_on_test"] = router_curve(a, hindsight, base)
        names.append("tuned_on_test")
    baselines: dict[str, Any] = {
        name: {"description": DESCRIPTIONS[name], "points": curves[name].points}
        for name in names}
    for name in ("fixed_formula", "fixed_formula_any_route"):
        if name in baselines:
            baselines[name]["weights"] = HYBRID_WEIGHTS
    if "column_threshold" in baselines and column is not None:
        baselines["column_threshold"]["column"] = column[0]
    baselines["oracle"] = {"description": DESCRIPTIONS["oracle"], **oracle(a.correct, a.cost / base)}
    methods = {k: c.points for k, c in curves.items()} | {"oracle": baselines["oracle"]["points"]}
    table = apgr_table(methods, singles.points)
    table["router_gain"] = {name: apgr_gain(curves["router"], curves[name], singles, n_boot)
                            for name in names}
    curve = curves["router"].points
    return {
        "n_items": len(a.items), "models": a.models, "last_model_cost": base,
        "policy_kind": getattr(policy, "kind", "route_thresholds"),
        "curve": curve, "baselines": baselines, "apgr": table,
        "oracle_bound": oracle_bound({k: v for k, v in methods.items() if k != "oracle"},
                                     baselines["oracle"]["points"]),
        # a baseline tuned on these very items is a bar to read, not a target to pass
        "targets": {"router_vs_baselines": router_vs_baselines(
                        curve, baselines, [n for n in names if n != "tuned_on_test"]),
                    "apgr_beats_fixed_formula": table["router_gain"].get("fixed_formula"),
                    "match_best_single": match_best_single(curve, baselines)},
    }


def per_dataset(a: EvalArrays, policy: Any, n_boot: int = 200, min_items: int = 20
                ) -> dict[str, Any]:
    """APGR of the router and each baseline on each dataset's items (sets of >= min_items)."""
    if a.datasets is None:
        return {}
    out = {}
    for name in sorted(set(a.datasets)):
        mask = a.datasets == name
        if mask.sum() < min_items:
            out[name] = {"n_items": int(mask.sum()), "note": f"fewer than {min_items} items"}
            continue
        rep = evaluate_arrays(a.subset(mask), policy, n_boot)
        out[name] = {"n_items": int(mask.sum()),
                     "apgr": {k: v["apgr"] for k, v in rep["apgr"]["methods"].items()},
                     "router_gain": rep["apgr"]["router_gain"]}
    return out


def read_item_ids(path: str | Path) -> set[str]:
    """Item ids from a JSON list, or a JSON object with an "items" list."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # they did not name the file
        raise ValueError(f"{path}: not a JSON file: {exc}") from None
    ids = data.get("items") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{path}: expected a JSON list of item ids or {{\"items\": [...]}}")
    return set(ids)


def select_items(
    table: pd.DataFrame, version_dir: Path, items_from: Path | None, exclude_from: Path | None
) -> tuple[pd.DataFrame, str]:
    """Rows of the evaluated items, and a sentence saying where the item list came from.

    Default (no list given): every item the version was not fitted on (training_items.json), so
    a table of new questions is judged whole and a table of the version's own traces on its
    held-out items; a version without that list (older) falls back to heldout_items.json."""
    ids = set(table["item_id"].astype(str))
    if items_from is None and exclude_from is None:
        if (version_dir / TRAINING_ITEMS).is_file():
            fitted = read_item_ids(version_dir / TRAINING_ITEMS)
            kept = table[~table["item_id"].isin(fitted)]
            if kept.empty:
                raise ValueError(f"every one of the {len(ids)} items given was a training item of "
                                 f"this version ({TRAINING_ITEMS}): nothing new to judge it on")
            return kept, (f"items the version was not fitted on ({kept['item_id'].nunique()} of "
                          f"{len(ids)}; {TRAINING_ITEMS} lists the others)")
        if (version_dir / HELDOUT_ITEMS).is_file():
            held = read_item_ids(version_dir / HELDOUT_ITEMS)
            if not ids & held:
                raise ValueError(
                    f"none of the {len(ids)} items given is among the version's {len(held)} "
                    f"held-out items ({HELDOUT_ITEMS}), and this version does not list its "
                    "training items: pass --items-from (the ids to judge it on) or "
                    "--exclude-items-from (the ids it was fitted on)")
            items_from = version_dir / HELDOUT_ITEMS
    source = "every item given"
    if items_from is not None:
        table = table[table["item_id"].isin(read_item_ids(items_from))]
        source = f"items listed in {_shown(items_from)} ({table['item_id'].nunique()} of {len(ids)})"
    if exclude_from is not None:
        table = table[~table["item_id"].isin(read_item_ids(exclude_from))]
        source += f" minus items listed in {_shown(exclude_from)}"
    if items_from is None and exclude_from is None:
        source += " (the version lists neither its held-out nor its training items: may include " \
                  "the items it was fitted on)"
    return table, source


def _shown(path: Path) -> str:
    """A path as the report states it: relative to the working directory when inside it, so a
    report shipped in the repository names no one machine's folders."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def panel_of(manifest: Manifest) -> Panel:
    """The version's panel (names, prices and, for a cascade policy, the prompt template its
    query features strip) as a Panel, for the feature table's costs and query columns."""
    models = [LlamaCppModel(name=m.name, cost=Cost(**m.cost)) for m in manifest.panel.models]
    template = (manifest.policy or {}).get("meta", {}).get("prompt_template")
    prompt = Prompt(template=template) if template else Prompt()
    return Panel(name=manifest.panel.name, models=models, prompt=prompt)


def run_evaluation(
    version_dir: str | Path, traces: Sequence[str | Path], out_dir: str | Path,
    items_from: Path | None = None, exclude_items_from: Path | None = None, mlflow: bool = True,
    table_path: Path | None = None, baseline_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate a version on traces, or on a ready feature table (the columns `train --table`
    takes: item_id, model, correct, cost and the version's signal columns; infinite values by
    training.train.clip_infinite's rule); write report.json and figures; return it. With a
    table the version may be one trained on its own columns (`train --table`)."""
    scorer = Scorer.load(version_dir, None if table_path is not None else FEATURE_NAMES)
    m = scorer.manifest
    if m.policy is None:
        raise ValueError(f"version {m.version} has no policy table to evaluate")
    policy, panel = load_policy(m.policy), panel_of(m)
    if table_path is not None:
        from training.train import read_feature_table

        raw, _ = read_feature_table(table_path)
        missing = [f for f in m.feature_names if f not in raw]
        if missing:
            raise ValueError(f"{table_path}: the version's signal columns {missing} are missing")
    else:
        raw = build_table(read_traces(traces), panel, m.feature_config)
    table, source = select_items(raw, scorer.path, items_from, exclude_items_from)
    full, arrays = scored_items(scorer, table)
    column = None
    if baseline_column is not None:
        column = (baseline_column, column_matrix(full, baseline_column, arrays.items, panel.names))
    report: dict[str, Any] = {
        "version": m.version, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cost_source": COST_SOURCE, "items_source": source,
        "items_without_every_model": int(table["item_id"].nunique() - len(arrays.items)),
        "datasets": full.groupby("dataset")["item_id"].nunique().astype(int).to_dict()
        if "dataset" in full else {},
        **evaluate_arrays(arrays, policy, column=column),
        "per_dataset": per_dataset(arrays, policy),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_report(report, out)
    report["figures"] = [f.name for f in figures]
    report["mlflow"] = "not requested"
    if mlflow:
        from training.tracking import TrackingError  # mlflow loads only when asked to log

        try:
            report["mlflow"] = _log(m.mlflow_run_id, report, figures, m.mlflow_tracking_uri)
        except TrackingError as exc:  # a broken store loses the log, not the report
            report["mlflow"] = f"not logged: {exc}"
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def scored_items(scorer: Scorer, table: pd.DataFrame) -> tuple[pd.DataFrame, EvalArrays]:
    """The selected items every panel model answered, and their arrays scored by the version
    as the service scores them; ValueError when no item has every model's answer."""
    m = scorer.manifest
    names = list(m.panel.names)
    full = complete_items(table, names)
    if full.empty:
        raise ValueError(f"no selected item has a trace from every panel model {names}")
    return full, arrays_from_table(full, names, m.feature_names, scorer.predict,
                                   m.feature_config.grader)


def column_matrix(table: pd.DataFrame, name: str, items: Sequence[str], models: Sequence[str]
                  ) -> np.ndarray:
    """(items, models) of a numeric column, for the one-threshold baseline on it; ValueError
    naming the column when the table lacks it or it is not numeric."""
    if name not in table:
        raise ValueError(f"--baseline-column {name!r}: no such column (the table has "
                         f"{sorted(map(str, table.columns))})")
    if not pd.api.types.is_numeric_dtype(table[name]) or pd.api.types.is_bool_dtype(table[name]):
        raise ValueError(f"--baseline-column {name!r}: the column is not numeric")
    wide = table.pivot_table(index="item_id", columns="model", values=name, aggfunc="first",
                             dropna=False)
    # infinite values were clipped by the table reader's rule (train.clip_infinite)
    x = wide.reindex(index=list(items), columns=list(models)).to_numpy(float)
    if not np.isfinite(x).any():
        raise ValueError(f"--baseline-column {name!r}: no finite value on the evaluated items")
    return x


def _log(run_id: str | None, report: dict[str, Any], figures: list[Path],
         uri: str | None = None) -> str:
    """Log to the version's MLflow run: in $MLFLOW_TRACKING_URI where it is set (the user's
    explicit choice), else in the store the manifest names, else the default store."""
    if run_id is None:
        return "not logged: the version has no mlflow_run_id"
    from training.tracking import log_evaluation  # mlflow loads only when asked to log

    return log_evaluation(run_id, report, figures, uri)
