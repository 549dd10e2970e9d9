"""Per-model correctness classifiers, calibrated on rows they did not see (scikit-learn contract).

`CorrectnessClassifier` cross-fits the base classifier over item-grouped, stratified folds: each
training row gets an out-of-fold score, the calibrator is fitted on those scores, and the base
classifier is then refitted on every training row (scikit-learn's `ensemble=False` scheme). The
calibrator is our own small estimator rather than `CalibratedClassifierCV`, because it must be
exported explicitly (two numbers or a knot table in the manifest; see DESIGN.md on why the ONNX
converter for the calibrated model cannot be trusted). Features are cast to float32 before any fit
or prediction: that is what the ONNX graph sees, so Python and ONNX compute from the same inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_array, check_is_fitted

from confroute.manifest import Calibration, Identity, Isotonic, Sigmoid
from training.classifiers import spec_of


class IsotonicCalibrator(BaseEstimator):
    """Isotonic regression of correctness on the base score, with knots at least `grid` apart.

    Scores are rounded to `grid` for the fit only, so adjacent knots are >= grid apart and the
    interpolated slope stays bounded: float32 rounding in the ONNX graph (~1e-7) then moves the
    calibrated probability by at most ~1e-7 * (jump / grid), well inside the parity tolerance.
    """

    def __init__(self, grid: float = 0.01) -> None:
        self.grid = grid

    def fit(self, f: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        f = np.round(np.asarray(f, dtype=np.float64) / self.grid) * self.grid
        self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        self.isotonic_.fit(f, np.asarray(y, dtype=np.float64))
        return self

    def predict(self, f: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "isotonic_")
        return np.asarray(self.isotonic_.predict(np.asarray(f, dtype=np.float64)))

    def to_manifest(self) -> Calibration:
        check_is_fitted(self, "isotonic_")
        iso = self.isotonic_
        return Isotonic(x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())


class SigmoidCalibrator(BaseEstimator):
    """Platt scaling: p = 1 / (1 + exp(a*f + b)), a and b by (nearly unpenalised) log loss."""

    def fit(self, f: np.ndarray, y: np.ndarray) -> SigmoidCalibrator:
        f = np.asarray(f, dtype=np.float64).reshape(-1, 1)
        self.logistic_ = LogisticRegression(C=1e6, max_iter=1000).fit(f, np.asarray(y, dtype=int))
        self.a_ = -float(self.logistic_.coef_[0, 0])
        self.b_ = -float(self.logistic_.intercept_[0])
        return self

    def predict(self, f: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "logistic_")
        f = np.asarray(f, dtype=np.float64).reshape(-1, 1)
        return np.asarray(self.logistic_.predict_proba(f)[:, 1])

    def to_manifest(self) -> Calibration:
        check_is_fitted(self, "logistic_")
        return Sigmoid(a=self.a_, b=self.b_)


class IdentityCalibrator(BaseEstimator):
    """No calibration: the base classifier's probability."""

    def fit(self, f: np.ndarray, y: np.ndarray) -> IdentityCalibrator:
        self.fitted_ = True
        return self

    def predict(self, f: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        return np.asarray(f, dtype=np.float64)

    def to_manifest(self) -> Calibration:
        return Identity()


AUTO_CALIBRATIONS = ("none", "sigmoid", "isotonic")  # what `auto` chooses among, simplest first


def make_calibrator(method: str, grid: float = 0.01) -> BaseEstimator:
    """A calibrator by its config name: isotonic, sigmoid or none."""
    if method == "isotonic":
        return IsotonicCalibrator(grid=grid)
    if method == "sigmoid":
        return SigmoidCalibrator()
    if method == "none":
        return IdentityCalibrator()
    raise ValueError(f"unknown calibration {method!r}; use isotonic, sigmoid or none")


def make_base(kind: str, params: dict[str, Any] | None, seed: int, n_jobs: int | None) -> Any:
    """The uncalibrated classifier of a kind (training/classifiers.py)."""
    return spec_of(kind).make(dict(params or {}), seed, n_jobs)


class PriorClassifier(ClassifierMixin, BaseEstimator):
    """The smoothed base rate (correct + 1) / (n + 2) for every row: too few answers to learn."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> PriorClassifier:
        y = np.asarray(y).astype(int)
        self.p_ = (y.sum() + 1.0) / (y.size + 2.0)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "p_")
        return np.tile([1.0 - self.p_, self.p_], (np.shape(X)[0], 1))


class CorrectnessClassifier(ClassifierMixin, BaseEstimator):
    """P(correct | signals) for one panel model: base classifier + cross-fitted calibrator."""

    def __init__(
        self,
        classifier: str = "lightgbm",
        calibration: str = "isotonic",
        params: dict[str, Any] | None = None,
        folds: int = 5,
        isotonic_grid: float = 0.01,
        random_state: int = 0,
        n_jobs: int | None = 1,
    ) -> None:
        self.classifier = classifier
        self.calibration = calibration
        self.params = params
        self.folds = folds
        self.isotonic_grid = isotonic_grid
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
    ) -> CorrectnessClassifier:
        """Cross-fit scores by group, calibrate on them, refit the base on all rows.

        With fewer than `folds` answers of either class there is nothing to cross-fit: the model
        falls back to the smoothed base rate (`kind_ == "prior"`), and says so in the manifest.
        """
        X = _float32(X)
        y = np.asarray(y).astype(int)
        if np.bincount(y, minlength=2).min() < self.folds:
            return self._fit_prior(X, y)
        splits = self._splits(X, y, groups)
        base = make_base(self.classifier, self.params, self.random_state, self.n_jobs)
        scores = np.empty(len(y))
        fold_bases = []
        self.fold_of_ = np.empty(len(y), dtype=np.int64)  # which fold held each training row out
        for k, (train, test) in enumerate(splits):
            fold_bases.append(clone(base).fit(X[train], y[train]))
            scores[test] = fold_bases[-1].predict_proba(X[test])[:, 1]
            self.fold_of_[test] = k
        self.calibration_ = self._chosen_calibration(scores, y, splits)
        calibrator = make_calibrator(self.calibration_, self.isotonic_grid)
        self.calibrator_ = clone(calibrator).fit(scores, y)
        self.oof_proba_ = np.empty(len(y))  # calibrated, and calibrated out of fold too
        self.fold_models_ = []
        for (train, test), fold_base in zip(splits, fold_bases, strict=True):
            fold_cal = clone(calibrator).fit(scores[train], y[train])
            self.oof_proba_[test] = fold_cal.predict(scores[test])
            self.fold_models_.append((fold_base, fold_cal))
        self.estimator_ = base.fit(X, y)
        return self._fitted(X, self.classifier)

    def _chosen_calibration(self, scores: np.ndarray, y: np.ndarray,
                            splits: list[tuple[np.ndarray, np.ndarray]]) -> str:
        """The configured calibration, or with `auto` the one of least out-of-fold Brier score
        on the cross-fitted scores (each fold's calibrator fitted on the other folds' scores):
        isotonic needs more rows than a few hundred give some models, sigmoid cannot bend, and
        which wins differs per model. Ties go to the simpler (none, then sigmoid)."""
        if self.calibration != "auto":
            return self.calibration
        self.calibration_brier_ = {}
        for kind in AUTO_CALIBRATIONS:
            q = np.empty(len(y))
            for train, test in splits:
                q[test] = make_calibrator(kind, self.isotonic_grid).fit(
                    scores[train], y[train]).predict(scores[test])
            self.calibration_brier_[kind] = float(brier_score_loss(y, q))
        return min(AUTO_CALIBRATIONS, key=lambda k: (round(self.calibration_brier_[k], 12),
                                                     AUTO_CALIBRATIONS.index(k)))

    def oof_proba(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Calibrated P(correct) of training rows `rows` given other features `X` for them (say,
        agree_prev as a route that skips a model sees it), each row scored by the fold model and
        calibrator that never saw it: out of fold, like `oof_proba_` (equal to it for the
        original features)."""
        check_is_fitted(self, "oof_proba_")
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind_ == "prior":
            return np.full(len(rows), float(self.estimator_.p_))
        X, out = _float32(X), np.empty(len(rows))
        fold = self.fold_of_[rows]
        for k, (fold_base, fold_cal) in enumerate(self.fold_models_):
            sel = fold == k
            if sel.any():
                out[sel] = fold_cal.predict(fold_base.predict_proba(X[sel])[:, 1])
        return out

    def _splits(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified folds that keep each group whole (one row per group: plain stratified,
        which gives the same folds' guarantees without StratifiedGroupKFold's per-group loop)."""
        kw = {"n_splits": self.folds, "shuffle": True, "random_state": self.random_state}
        if groups is None or len(np.unique(groups)) == len(y):
            return list(StratifiedKFold(**kw).split(X, y))
        return list(StratifiedGroupKFold(**kw).split(X, y, groups))

    def _fit_prior(self, X: np.ndarray, y: np.ndarray) -> CorrectnessClassifier:
        self.calibration_ = "none"
        self.estimator_ = PriorClassifier().fit(X, y)
        self.calibrator_ = IdentityCalibrator().fit(y, y)
        self.oof_proba_ = np.full(len(y), self.estimator_.p_)
        return self._fitted(X, "prior")

    def _fitted(self, X: np.ndarray, kind: str) -> CorrectnessClassifier:
        self.kind_ = kind
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def base_proba(self, X: np.ndarray) -> np.ndarray:
        """The base classifier's uncalibrated P(correct) (what the ONNX graph outputs)."""
        check_is_fitted(self, "estimator_")
        return np.asarray(self.estimator_.predict_proba(_float32(X))[:, 1], dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated [P(incorrect), P(correct)] per row."""
        check_is_fitted(self, "calibrator_")
        p = self.calibrator_.predict(self.base_proba(X))
        return np.column_stack([1.0 - p, p])

    def feature_importances(self) -> np.ndarray:
        """One number per feature, as the kind's spec reads them (zeros for the prior)."""
        check_is_fitted(self, "estimator_")
        if self.kind_ == "prior":
            return np.zeros(self.n_features_in_)
        return spec_of(self.kind_).importances(self.estimator_)


def _float32(X: np.ndarray) -> np.ndarray:
    """Features as the ONNX graph sees them: float32, NaN allowed (missing signals)."""
    return check_array(X, dtype=np.float32, ensure_all_finite="allow-nan")
