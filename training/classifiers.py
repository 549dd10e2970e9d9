"""The base classifiers a config may name: one small spec per kind, the only place a kind is spelled.

A spec says how to build the uncalibrated estimator, how to read its feature importances and how
to convert it to ONNX (the raw graph; export.py names its output and checks parity). A new kind
is one entry here, its name in `training/config.py` (`ClassifierKind`) and its parameter block
there; nothing else branches on the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from lightgbm import LGBMClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class ClassifierSpec:
    make: Callable[[dict[str, Any], int, int | None], Any]  # (params, seed, n_jobs) -> estimator
    importances: Callable[[Any], np.ndarray]  # fitted estimator -> one number per feature
    to_onnx: Callable[[Any, int], onnx.ModelProto]  # (fitted estimator, n_features) -> graph


def _lightgbm(params: dict[str, Any], seed: int, n_jobs: int | None) -> Any:
    return LGBMClassifier(random_state=seed, n_jobs=n_jobs, verbosity=-1, **params)


def _lightgbm_onnx(est: Any, n: int) -> onnx.ModelProto:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model: onnx.ModelProto = convert_lightgbm(
        est, initial_types=[("X", FloatTensorType([None, n]))], zipmap=False)
    return model


def _logistic(params: dict[str, Any], seed: int, n_jobs: int | None) -> Any:
    return Pipeline([
        # keep_empty_features: an all-NaN column (agree_prev for the first model) stays a column
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("logistic", LogisticRegression(random_state=seed, **params)),
    ])


def _logistic_onnx(est: Any, n: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model: onnx.ModelProto = convert_sklearn(
        est, initial_types=[("X", FloatTensorType([None, n]))], options={id(est): {"zipmap": False}})
    return model


SPECS: dict[str, ClassifierSpec] = {
    "lightgbm": ClassifierSpec(
        _lightgbm, lambda est: np.asarray(est.booster_.feature_importance("gain"), dtype=float),
        _lightgbm_onnx),  # NaN-native; importances: total gain per feature
    "logistic": ClassifierSpec(
        _logistic, lambda est: np.abs(est.named_steps["logistic"].coef_[0]),
        _logistic_onnx),  # importances: |coefficient| on the standardised scale
}


def spec_of(kind: str) -> ClassifierSpec:
    """The spec of a kind; ValueError naming the known ones for any other."""
    if kind not in SPECS:
        raise ValueError(f"unknown classifier {kind!r}; use {' or '.join(SPECS)}")
    return SPECS[kind]
