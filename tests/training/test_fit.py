"""Classifiers, calibration, split and metrics, fitted on a slice of the real reference traces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from confroute.cascade import CascadePolicy
from confroute.panel import ConfigError, load_panel
from confroute.policies import load_policy
from confroute.policy import ThresholdPolicy
from training import quality as M
from training.config import TrainConfig, load_config
from training.fit import CorrectnessClassifier
from training.table import item_groups
from training.train import Dataset, fit_panel, fit_policy_table, load_dataset, split_items

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
TRACES = REFERENCE / "multiarith_test.traces.npz"


@pytest.fixture(scope="module")
def config() -> TrainConfig:
    return TrainConfig(panel=ROOT / "configs/panel.cpu.yaml", traces=[TRACES], max_items=100,
                       bootstrap=50)


@pytest.fixture(scope="module")
def data(config: TrainConfig) -> Dataset:
    return load_dataset(config, load_panel(config.panel))


def _model_rows(data: Dataset, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = data.table[data.table["model"] == model]
    return t[data.features].to_numpy(float, copy=True), t["correct"].to_numpy(), t["item_id"].to_numpy()


def _learnable(data: Dataset) -> str:
    """The panel model with the most answers of its rarer class in the slice."""
    counts = data.table.groupby("model")["correct"].agg(["sum", "count"])
    return str((counts["count"] - counts["sum"]).clip(upper=counts["sum"]).idxmax())


def test_split_keeps_every_item_on_one_side(data: Dataset) -> None:
    sides = data.table.assign(test=data.test).groupby("item_id")["test"].nunique()
    assert (sides == 1).all()
    share = data.table.loc[data.test, "item_id"].nunique() / data.table["item_id"].nunique()
    assert 0.25 <= share <= 0.35
    assert (split_items(item_groups(data.table), 0.3, 0) == data.test).all()  # reproducible


def test_estimator_contract() -> None:
    clf = CorrectnessClassifier("logistic", "sigmoid", folds=3)
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        clf.predict_proba(np.zeros((1, 3)))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), rng.random(60) < 0.5
    assert clf.fit(X, y) is clf
    assert clf.classes_.tolist() == [0, 1] and clf.n_features_in_ == 3
    assert not hasattr(CorrectnessClassifier(), "estimator_")


@pytest.mark.parametrize("kind,calibration", [("lightgbm", "isotonic"), ("logistic", "sigmoid"),
                                              ("lightgbm", "none")])
def test_fits_real_rows_with_nan_and_constant_features(
    data: Dataset, kind: str, calibration: str
) -> None:
    X, y, groups = _model_rows(data, _learnable(data))
    X[:, data.features.index("agree_prev")] = np.nan  # as for the first panel model
    X[::3, data.features.index("answer_logprob")] = np.nan
    clf = CorrectnessClassifier(kind, calibration).fit(X, y, groups)
    p = clf.predict_proba(X)[:, 1]
    assert clf.kind_ == kind
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert np.isfinite(clf.oof_proba_).all() and clf.oof_proba_.shape == y.shape
    assert clf.feature_importances().shape == (X.shape[1],)


@pytest.mark.parametrize("kind,calibration", [("lightgbm", "isotonic"), ("logistic", "sigmoid")])
def test_out_of_fold_scoring_of_other_features(data: Dataset, kind: str, calibration: str) -> None:
    X, y, groups = _model_rows(data, _learnable(data))
    clf = CorrectnessClassifier(kind, calibration).fit(X, y, groups)
    rows = np.arange(len(y))[::-1]  # any order of the training rows
    np.testing.assert_allclose(clf.oof_proba(X[rows], rows), clf.oof_proba_[rows], atol=1e-12)
    changed = X.copy()
    col = data.features.index("avg_logprob")
    changed[:, col] = np.nanmin(X[:, col])  # every answer now looks unsure
    assert clf.oof_proba(changed, np.arange(len(y))).mean() < clf.oof_proba_.mean()


def test_policy_is_fitted_on_what_a_route_that_skips_a_model_sees(
    config: TrainConfig, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service computes agree_prev from the models a route actually called; the policy must be
    # fitted on p computed the same way, not on agreement with every cheaper panel model.
    import training.fit_policy as fp

    panel = load_panel(config.panel)
    fitted = fit_panel(config.model_copy(update={"classifier": "logistic"}), data, panel.names)
    seen: dict[str, object] = {}
    real = fp.fit_policy

    def spy(p: np.ndarray, *args: object, **kw: object) -> ThresholdPolicy:
        seen["p"], seen["route_p"] = p, kw["route_p"]
        return real(p, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fp, "fit_policy", spy)
    fit_policy_table(config, data, fitted, panel.names)
    route_p, p = seen["route_p"], seen["p"]
    assert callable(route_p) and isinstance(p, np.ndarray)
    full = route_p((0, 1, 2))  # skips nothing: agreement with every cheaper model, as trained
    # equal up to float32 rounding: the scores are recomputed on a differently shaped batch
    np.testing.assert_allclose(full[:, :2], p[:, :2], atol=1e-6)
    skip = route_p((1, 2))  # the 0.5B called first: no earlier answer, agree_prev NaN
    assert np.isnan(skip[:, 0]).all() and np.isfinite(skip[:, 1]).all()
    # the skipping route scores the 0.5B with agree_prev NaN, out of fold, as the service sees it
    from training.train import _rows

    items = data.table.loc[~data.test].pivot_table(
        index="item_id", columns="model", values="correct", aggfunc="first").dropna().index
    rows = _rows(data, panel.names[1], test=False)
    pos = pd.Index(rows["item_id"]).get_indexer(items)
    x = rows[data.features].to_numpy(float)[pos]
    x[:, data.features.index("agree_prev")] = np.nan
    np.testing.assert_allclose(skip[:, 1], fitted[panel.names[1]].oof_proba(x, pos), atol=1e-6)


def test_calibration_sees_only_out_of_fold_scores() -> None:
    """On pure noise an in-sample calibration would trust the memorising trees; this must not."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(400, 5)), rng.random(400) < 0.3
    clf = CorrectnessClassifier("lightgbm", "isotonic").fit(X, y)
    X_new = rng.normal(size=(400, 5))
    assert np.std(clf.base_proba(X)) > 0.15  # the trees memorise their training rows
    p = clf.predict_proba(X_new)[:, 1]
    assert abs(p.mean() - 0.3) < 0.08 and np.std(p) < 0.12


def test_too_few_answers_fall_back_to_the_base_rate() -> None:
    X, y = np.random.default_rng(2).normal(size=(50, 4)), np.zeros(50, dtype=bool)
    y[:3] = True
    clf = CorrectnessClassifier("lightgbm", "isotonic", folds=5).fit(X, y)
    assert clf.kind_ == "prior"
    assert np.allclose(clf.predict_proba(X)[:, 1], 4 / 52)


def test_metrics_against_references() -> None:
    rng = np.random.default_rng(3)
    y, s = rng.random(300) < 0.4, rng.normal(size=300)
    s[:20] = s[20]  # ties
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(M.auroc(np.ones(5), s[:5]))
    p = np.repeat([0.2, 0.8], 50)
    yy = np.r_[np.zeros(40), np.ones(10), np.zeros(10), np.ones(40)]  # perfectly calibrated
    assert M.ece(yy, p, 10) == pytest.approx(0.0, abs=1e-12)
    assert M.ece(yy, np.full(100, 0.9), 10) == pytest.approx(0.4)
    lo, hi = M.bootstrap(y.astype(float), 1 / (1 + np.exp(-s)), n_boot=200)["auroc"]
    assert lo <= M.auroc(y, s) <= hi
    few, many = M.ece_if_calibrated(rng.random(60))[0], M.ece_if_calibrated(rng.random(3000))[0]
    assert few > 0.08 > 0.03 > many  # ECE's small-sample bias, reported beside ECE


def test_signal_orientation_comes_from_training_rows() -> None:
    y = np.array([0, 0, 1, 1] * 10, dtype=bool)
    x = np.where(y, -1.0, 1.0)  # low values mean correct
    aucs = M.signal_aurocs(x[:, None], y, x[:, None], y, ["s"])
    assert aucs["s"] == 1.0
    flipped = M.signal_aurocs(-x[:, None], y, x[:, None], y, ["s"])  # train says the opposite
    assert flipped["s"] == 0.0


def test_policy_fits_on_cross_fitted_training_rows(config: TrainConfig, data: Dataset) -> None:
    panel = load_panel(config.panel)
    fitted = fit_panel(config.model_copy(update={"classifier": "logistic"}), data, panel.names)
    table = fit_policy_table(config, data, fitted, panel.names)
    cascade = load_policy(table)
    earlier = ThresholdPolicy.from_dict(table["meta"]["route_thresholds"])  # the baseline, same rows
    train_items = data.table.loc[~data.test, "item_id"].nunique()
    assert isinstance(cascade, CascadePolicy) and earlier.models == cascade.models
    assert cascade.models == tuple(panel.names)
    assert 0 < cascade.rows[0].n_items == earlier.rows[0].n_items <= train_items
    assert cascade.meta["start_uses_query"] and cascade.meta["prompt_template"]
    assert earlier.route(0.0)[-1] in panel.names
    assert cascade.rows[0].accuracy >= max(cascade.meta["single_accuracy"].values()) - 0.02


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("classifier: lightgbm\ncalibraton: isotonic\n")
    with pytest.raises(ConfigError, match="calibraton"):
        load_config(path)
    assert load_config(ROOT / "configs/train.yaml").classifier in {"lightgbm", "logistic"}


def test_every_config_classifier_has_one_spec() -> None:
    """The config's kinds and the registry's are the same set; any other name is refused."""
    from training.classifiers import SPECS, spec_of
    from training.config import CLASSIFIERS
    from training.fit import make_base

    assert set(SPECS) == set(CLASSIFIERS)
    with pytest.raises(ValueError, match="unknown classifier 'svm'; use lightgbm or logistic"):
        make_base("svm", None, 0, 1)
    assert spec_of("logistic").make({"C": 0.5}, 0, 1).named_steps["logistic"].C == 0.5
    from confroute.manifest import ModelEntry  # the runtime takes any kind: it reads the ONNX

    entry = ModelEntry.model_validate({"file": "m.onnx", "classifier": "a-new-kind",
                                       "calibration": {"method": "none"}})
    assert entry.classifier == "a-new-kind"
