"""One training run: config -> table -> item split -> fit -> metrics -> policy -> export -> MLflow.

Rows are (item, model) answers. Items (not rows) are split into training and held-out test sets,
so no question is on both sides for any model. Each panel model's classifier is fitted on its
training rows (calibrated by grouped cross-fitting, see fit.py) and judged on its test rows. The
policy is fitted on the training items answered by every panel model, from cross-fitted
calibrated probabilities: each comes from a classifier and calibrator that never saw that item.
Rows without logprobs (has_logprobs == 0) are left out of fitting and metrics: the runtime
scorer gives them no probability and the policy escalates them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from confroute.features import FEATURE_NAMES
from confroute.grading import DEFAULT_GRADER
from confroute.manifest import PanelInfo, PanelModelInfo, check_current_link
from confroute.panel import Panel, load_panel
from confroute.traces import read_traces
from training import plots, registry, tracking
from training import quality as M
from training.classifiers import SPECS
from training.config import TrainConfig
from training.export import export_version
from training.fit import CorrectnessClassifier
from training.table import GROUP_COLUMN, META_COLUMNS, QUERY_COLUMNS, build_table, item_groups

REQUIRED_COLUMNS = ("item_id", "model", "correct", "cost")


class TrainError(ValueError):
    """Input that cannot be trained on (too few answers, missing models); says what to do."""


@dataclass(frozen=True)
class Dataset:
    """The feature table, its feature columns in order, and which rows are held out."""

    table: pd.DataFrame
    features: list[str]
    test: np.ndarray  # (rows,) bool


@dataclass(frozen=True)
class TrainResult:
    classifier: str
    calibration: str
    run_id: str
    version_dir: Path
    metrics: dict[str, dict[str, Any]]  # per model, held-out
    parity: dict[str, float]  # per model, max |ONNX - Python|


def read_feature_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A ready CSV/Parquet table: item_id, model, correct, cost + numeric signal columns."""
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path)
    elif path.suffix.lower() in {".parquet", ".pq"}:
        table = pd.read_parquet(path)
    else:
        raise TrainError(f"{path}: feature table must be .csv or .parquet")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise TrainError(f"{path}: feature table lacks column(s) {missing}")
    table["item_id"] = table["item_id"].astype(str)
    if table.duplicated(["item_id", "model"]).any():
        raise TrainError(f"{path}: more than one row for some (item_id, model) pairs")
    if not (pd.api.types.is_bool_dtype(table["correct"]) or table["correct"].isin([0, 1]).all()):
        raise TrainError(f"{path}: column 'correct' must hold true/false or 0/1")
    table["correct"] = table["correct"].astype(bool)
    cost = pd.to_numeric(table["cost"], errors="coerce")
    if not (_numeric(table["cost"]) and np.isfinite(cost).all() and (cost >= 0).all()):
        raise TrainError(f"{path}: column 'cost' must hold a finite number >= 0 in every row")
    skip = {*META_COLUMNS, *QUERY_COLUMNS, GROUP_COLUMN}
    features = [c for c in table.columns if c not in skip and _numeric(table[c])]
    if not features:
        raise TrainError(f"{path}: no numeric signal columns besides {list(META_COLUMNS)}")
    return clip_infinite(table, features), features


def clip_infinite(table: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """The rule for infinite signal values (a logprob of -inf is one real backends return): -inf
    becomes the column's finite minimum and +inf its finite maximum (NaN where the column has
    no finite value), so such a row sorts as the least (most) confident one instead of making
    the whole table unusable. Traces need no rule: a token logprob of -inf (or at or below
    traces.LOGPROB_FLOOR) is a missing logprob there, dropped before any signal is computed,
    in training, evaluation and serving alike."""
    out = table.copy()
    for col in features:
        x = out[col].to_numpy(float)
        inf = np.isinf(x)
        if inf.any():
            finite = x[np.isfinite(x)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (np.nan, np.nan)
            out[col] = np.where(x == -np.inf, lo, np.where(x == np.inf, hi, x))
    return out


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def load_dataset(config: TrainConfig, panel: Panel) -> Dataset:
    """The table from traces (shared feature code) or a ready table, and the item split."""
    if config.table is not None:
        table, features = read_feature_table(config.table)
    else:
        for path in config.traces:
            if not path.exists():
                raise FileNotFoundError(f"trace path {path} does not exist")
        traces = read_traces(config.traces)
        if not traces:
            where = [str(p) for p in config.traces]
            raise TrainError(f"no traces (*.jsonl, *.jsonl.gz, *.traces.npz) in {where}")
        table = build_table(traces, panel, config.features)
        features = list(FEATURE_NAMES)
    table = table[table["model"].isin(panel.names)].reset_index(drop=True)
    if config.max_items is not None:
        keep = np.sort(table["item_id"].unique())[: config.max_items]
        table = table[table["item_id"].isin(keep)].reset_index(drop=True)
    absent = [m for m in panel.names if not (table["model"] == m).any()]
    if absent:
        raise TrainError(f"no answers from panel model(s) {absent} in the input; "
                         f"generate their traces or use a panel without them")
    return Dataset(table, features, split_items(item_groups(table), config.test_size, config.seed))


def split_items(items: pd.Series, test_size: float, seed: int) -> np.ndarray:
    """Held-out mask: a random `test_size` share of items (or of item groups, given
    table.item_groups), every row of an item on one side."""
    ids = np.unique(items.astype(str).to_numpy())
    n_test = min(max(1, round(test_size * ids.size)), ids.size - 1)
    test_ids = np.random.default_rng(seed).permutation(ids)[:n_test]
    return items.isin(test_ids).to_numpy()


def _rows(data: Dataset, model: str, test: bool) -> pd.DataFrame:
    """One model's scored rows (with logprobs) on one side of the split."""
    t = data.table
    mask = (t["model"] == model).to_numpy() & (data.test == test)
    if "has_logprobs" in data.features:
        mask &= (t["has_logprobs"] == 1).to_numpy()
    return t[mask]


def fit_panel(
    config: TrainConfig, data: Dataset, models: list[str]
) -> dict[str, CorrectnessClassifier]:
    """One calibrated classifier per panel model, on its training rows."""
    # the config block named like the classifier kind (lightgbm: ..., logistic: ...)
    params = getattr(config, config.classifier).model_dump()
    fitted = {}
    for model in models:
        rows = _rows(data, model, test=False)
        clf = CorrectnessClassifier(config.classifier, config.calibration, params, config.folds,
                                    config.isotonic_grid, config.seed, config.n_jobs)
        try:
            fitted[model] = clf.fit(rows[data.features].to_numpy(float), rows["correct"].to_numpy(),
                                    groups=item_groups(rows).to_numpy())
        except ValueError as exc:
            raise TrainError(f"{model}: {exc}") from None
    return fitted


def evaluate_panel(
    config: TrainConfig, data: Dataset, fitted: dict[str, CorrectnessClassifier]
) -> dict[str, dict[str, Any]]:
    """Held-out metrics, intervals and the raw-signal baseline, per model."""
    out = {}
    for model, clf in fitted.items():
        train, test = _rows(data, model, test=False), _rows(data, model, test=True)
        X_test = test[data.features].to_numpy(float)
        p = clf.predict_proba(X_test)[:, 1] if len(test) else np.empty(0)
        out[model] = M.evaluate(
            test["correct"].to_numpy(), p, train[data.features].to_numpy(float),
            train["correct"].to_numpy(), X_test, data.features, config.ece_bins,
            config.bootstrap, config.seed)
    return out


def fit_policy_table(
    config: TrainConfig, data: Dataset, fitted: dict[str, CorrectnessClassifier], models: list[str]
) -> dict[str, Any]:
    """The λ table, fitted on training items every model answered, from cross-fitted p.

    With `policy: selected` (the default) or `cascade` the manifest holds a cascade policy and, in
    its meta, the route-and-thresholds table fitted on the same rows (what `confroute evaluate`
    compares)."""
    from training.fit_cascade import fit_cascade
    from training.fit_policy import fit_policy, route_p_from_stages
    from training.select_policy import fit_selected

    train = data.table[~data.test]
    p = pd.DataFrame(np.nan, index=pd.Index(train["item_id"].unique()), columns=models)
    for model, clf in fitted.items():
        rows = _rows(data, model, test=False)
        p.loc[rows["item_id"].to_numpy(), model] = clf.oof_proba_
    wide = train.pivot_table(index="item_id", columns="model", values=["correct", "cost"],
                             aggfunc="first")
    complete = wide.dropna().index
    if complete.empty:
        raise TrainError("no training item was answered by every panel model; cannot fit a policy")
    correct = wide.loc[complete, "correct"][models].to_numpy(bool)
    cost = wide.loc[complete, "cost"][models].to_numpy(float)
    scorer = _stage_p(data, fitted, models, complete, config.features.grader)
    route_p = route_p_from_stages(scorer, len(models), len(complete)) if scorer else None
    table = fit_policy(p.loc[complete, models].to_numpy(float), correct, cost, models,
                       config.lambdas, route_p=route_p).to_dict()
    if config.policy == "route_thresholds":
        return table
    pm = p.loc[complete, models].to_numpy(float)
    stage = scorer or (lambda j, before: pm[:, j])
    query = query_matrix(train, complete)
    if config.policy == "selected":
        cascade = fit_selected(stage, correct, cost, models, query=query, lambdas=config.lambdas,
                               folds=config.folds, seed=config.seed)
    else:
        cascade = fit_cascade(stage, correct, cost, models, query=query, lambdas=config.lambdas,
                              seed=config.seed)
    out = cascade.to_dict()
    # the query features read the bare question: the service and evaluate strip this template
    out["meta"]["prompt_template"] = load_panel(config.panel).prompt.template
    out["meta"]["route_thresholds"] = table
    return out


def query_matrix(table: pd.DataFrame, items: pd.Index) -> np.ndarray | None:
    """(items, QUERY_COLUMNS) from a table that has them (traces do; a user's table may not)."""
    if not all(c in table for c in QUERY_COLUMNS):
        return None
    q = table.drop_duplicates("item_id").set_index("item_id").loc[items, list(QUERY_COLUMNS)]
    return q.to_numpy(float)


def _stage_p(
    data: Dataset, fitted: dict[str, CorrectnessClassifier], models: list[str], items: pd.Index,
    grader: str = DEFAULT_GRADER,
) -> Callable[[int, tuple[int, ...]], np.ndarray] | None:
    """Out-of-fold p of model j after the calls `before`, agree_prev recomputed over those calls'
    answers as the service computes it (a call that skipped a cheaper model never saw its answer)."""
    if "agree_prev" not in data.features or "prediction" not in data.table:
        return None
    from training.eval_arrays import stage_scorer

    X, preds, where = [], [], {}
    for model in models:
        rows = _rows(data, model, test=False)  # the order of the classifier's training rows
        pos = pd.Index(rows["item_id"]).get_indexer(items)  # -1: no scored row for the item
        x = np.full((len(items), len(data.features)), np.nan)
        x[pos >= 0] = rows[data.features].to_numpy(float)[pos[pos >= 0]]
        answers = rows["prediction"].to_numpy(object)
        preds.append([answers[i] if i >= 0 and isinstance(answers[i], str) else None for i in pos])
        X.append(x)
        where[model] = pos

    def predict(model: str, x: np.ndarray) -> np.ndarray:
        pos, out = where[model], np.full(len(x), np.nan)
        out[pos >= 0] = fitted[model].oof_proba(x[pos >= 0], pos[pos >= 0])
        return out

    return stage_scorer(models, X, preds, data.features, predict, grader)


def figures(data: Dataset, fitted: dict[str, CorrectnessClassifier], out: Path, bins: int) -> None:
    """Reliability diagrams, signal histograms per model, feature importances (PNG)."""
    held = {}
    for model, clf in fitted.items():
        test, train = _rows(data, model, test=True), _rows(data, model, test=False)
        p = clf.predict_proba(test[data.features].to_numpy(float))[:, 1]
        held[model] = (test["correct"].to_numpy(), p)
        plots.signal_histograms(train[data.features].to_numpy(float), train["correct"].to_numpy(),
                                data.features, out / f"signals_{model}.png", f"{model} (training)")
    plots.reliability(held, out / "reliability.png", bins)
    imp = {m: clf.feature_importances() for m, clf in fitted.items()}
    plots.importances(imp, data.features, out / "importances.png")


def run_params(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """Flat MLflow params: the config (only the chosen classifier's settings) and data sizes."""
    flat = config.model_dump(mode="json", exclude={"sweep", "tracking", *SPECS})
    chosen = getattr(config, config.classifier).model_dump()
    params = {k: v for k, v in flat.items() if not isinstance(v, dict)}
    params.update({f"features.{k}": v for k, v in flat["features"].items()})
    params.update({f"{config.classifier}.{k}": v for k, v in chosen.items()})
    params.update(ece_binning=f"{config.ece_bins} equal-mass bins", rows=len(data.table),
                  items=data.table["item_id"].nunique(),
                  test_items=data.table.loc[data.test, "item_id"].nunique())
    return params


def panel_info(panel: Panel) -> PanelInfo:
    return PanelInfo(name=panel.name, models=[
        PanelModelInfo(name=m.name, cost=m.cost.model_dump()) for m in panel.models])


@dataclass(frozen=True)
class Built:
    """A fitted, evaluated and exported panel."""

    fitted: dict[str, CorrectnessClassifier]
    metrics: dict[str, dict[str, Any]]  # per model, held-out
    version_dir: Path
    parity: dict[str, float]  # per model, max |ONNX - Python| on held-out rows


def build_version(
    config: TrainConfig, data: Dataset, panel: Panel, run_id: str | None = None
) -> Built:
    """Fit every panel model, evaluate on held-out items, fit the policy, export a version."""
    fitted = fit_panel(config, data, panel.names)
    metrics = evaluate_panel(config, data, fitted)
    policy = fit_policy_table(config, data, fitted, panel.names)
    held_out = {m: _rows(data, m, test=True)[data.features].to_numpy(float) for m in fitted}
    version_dir, diffs = export_version(
        config.models_dir, fitted, held_out, panel=panel_info(panel),
        feature_names=data.features, feature_config=config.features, policy=policy,
        metrics=metrics, mlflow_run_id=run_id,
        mlflow_tracking_uri=tracking.resolve_uri(config.tracking.uri) if run_id else None,
        # the service computes FEATURE_NAMES: a version on other columns cannot serve, so it is
        # exported (for offline use) without becoming current
        switch=config.switch_current and list(data.features) == list(FEATURE_NAMES),
        heldout_items=data.table.loc[data.test, "item_id"].unique().tolist(),
        training_items=data.table.loc[~data.test, "item_id"].unique().tolist())
    return Built(fitted, metrics, version_dir, diffs)


def train(config: TrainConfig, data: Dataset | None = None) -> TrainResult:
    """Build a version and log it all (params, metrics, figures, model files) as one MLflow run."""
    if config.switch_current:
        check_current_link(config.models_dir)  # before the fit, not after it
    panel = load_panel(config.panel)
    data = data or load_dataset(config, panel)
    name = f"{config.classifier}-{config.calibration}"
    with tracking.start_run(config.tracking.uri, config.tracking.experiment, run_name=name) as run:
        run.log_params(run_params(config, data))
        built = build_version(config, data, panel, run.run_id)
        run.log_metrics(tracking.flat_metrics(built.metrics)
                        | {f"parity_max_abs.{m}": d for m, d in built.parity.items()})
        run.set_tags({"version": built.version_dir.name, **{
            f"best_signal.{m}": v["best_signal"] for m, v in built.metrics.items()}})
        if config.figures:
            with tempfile.TemporaryDirectory() as tmp:
                figures(data, built.fitted, Path(tmp), config.ece_bins)
                run.log_artifacts(tmp, "figures")
        run.log_artifacts(built.version_dir, "model")
        if config.registry.enabled:
            number = registry.register(config.tracking.uri, config.registry.name, run.run_id,
                                       built.version_dir.name)
            run.set_tags({"registered": f"models:/{config.registry.name}/{number}"})
            if config.switch_current:  # what this machine now serves is the champion
                registry.set_alias(config.tracking.uri, config.registry.name,
                                   registry.CHAMPION, number)
    return TrainResult(config.classifier, config.calibration, run.run_id, built.version_dir,
                       built.metrics, built.parity)


def sweep(config: TrainConfig) -> list[TrainResult]:
    """One run per classifier x calibration on the same data and split; `current` is left alone."""
    panel = load_panel(config.panel)
    data = load_dataset(config, panel)
    results = []
    for clf in config.sweep.classifiers:
        for cal in config.sweep.calibrations:
            one = config.model_copy(update={"classifier": clf, "calibration": cal,
                                            "switch_current": False})
            results.append(train(one, data))
    return results
