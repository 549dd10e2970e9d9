"""The training config (configs/train.yaml): validated, unknown keys rejected, every default stated.

Relative paths are taken from the working directory (the repository root for the shipped configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from confroute.manifest import FeatureSpec
from confroute.panel import StrictModel, load_yaml_model

ClassifierKind = Literal["lightgbm", "logistic"]
CalibrationKind = Literal["isotonic", "sigmoid", "none", "auto"]
CLASSIFIERS: tuple[ClassifierKind, ...] = ("lightgbm", "logistic")
CALIBRATIONS: tuple[CalibrationKind, ...] = ("isotonic", "sigmoid", "none")


class LightGBMParams(StrictModel):
    """Small trees: a few hundred answers per model, so shallow leaves and many small steps."""

    n_estimators: Annotated[int, Field(ge=1)] = 200
    num_leaves: Annotated[int, Field(ge=2)] = 15
    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    min_child_samples: Annotated[int, Field(ge=1)] = 10  # ~10 answers per leaf at the least
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 1.0


class LogisticParams(StrictModel):
    """Imputer (median) + StandardScaler + L2 logistic regression."""

    C: Annotated[float, Field(gt=0)] = 1.0
    max_iter: Annotated[int, Field(ge=10)] = 1000


class Tracking(StrictModel):
    """MLflow: `uri` beats env MLFLOW_TRACKING_URI, which beats sqlite:///mlruns/mlflow.db."""

    uri: str | None = None
    experiment: str = "confroute"


class Registry(StrictModel):
    """The MLflow Model Registry: each exported version registered under `name` (training/registry.py)."""

    enabled: bool = True
    name: str = Field("confroute", min_length=1, pattern=r"^[\w.-]+$")


class Sweep(StrictModel):
    """`confroute train --sweep`: one run per classifier x calibration."""

    classifiers: list[ClassifierKind] = Field(default_factory=lambda: list(CLASSIFIERS),
                                              min_length=1)
    calibrations: list[CalibrationKind] = Field(default_factory=lambda: list(CALIBRATIONS),
                                                min_length=1)


class TrainConfig(StrictModel):
    """Everything one training run needs; `confroute train --config` reads it."""

    panel: Path = Path("configs/panel.cpu.yaml")
    # files or directories of JSONL(.gz) traces; signals from the shared feature code
    traces: list[Path] = Field(default_factory=lambda: [Path("data/reference-traces")])
    table: Path | None = None  # a ready feature table (CSV/Parquet) instead of traces
    max_items: Annotated[int | None, Field(ge=2)] = None  # first N items (sorted ids) only
    classifier: ClassifierKind = "lightgbm"
    calibration: CalibrationKind = "isotonic"
    # share of items held out for the reported metrics
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.3
    # item-grouped, stratified cross-fitting folds: calibration rows and policy rows
    folds: Annotated[int, Field(ge=2)] = 5
    # isotonic knots at least this far apart: bounded slope, so float32 ONNX keeps parity
    isotonic_grid: Annotated[float, Field(gt=0, le=0.1)] = 0.01
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # numpy takes 0..2^32-1
    # LightGBM threads: OpenMP spins badly on a busy 2-core machine
    n_jobs: Annotated[int, Field(ge=1)] = 1
    bootstrap: Annotated[int, Field(ge=0)] = 1000  # resamples for the 95% intervals (0: none)
    ece_bins: Annotated[int, Field(ge=2)] = 10  # equal-mass bins
    figures: bool = True  # reliability, signal histograms, importances as PNG in the run
    lambdas: list[float] | None = None  # policy grid; None: the policy's default
    # selected: per λ the candidate (single model, one global threshold, per-model thresholds,
    # the fitted cascade) that cross-validation on the training items favours
    # (training/select_policy.py); cascade: the fitted cascade alone (training/fit_cascade.py);
    # route_thresholds: the earlier table of one route and thresholds per λ (fit_policy.py)
    policy: Literal["selected", "cascade", "route_thresholds"] = "selected"
    models_dir: Path = Path("models")
    switch_current: bool = True  # point models/current at the new version
    lightgbm: LightGBMParams = LightGBMParams()
    logistic: LogisticParams = LogisticParams()
    features: FeatureSpec = FeatureSpec()  # written into the manifest as is
    tracking: Tracking = Tracking()
    registry: Registry = Registry()
    sweep: Sweep = Sweep()

    @model_validator(mode="after")
    def _lambdas(self) -> TrainConfig:
        if self.lambdas is not None and not all(0 <= lam <= 1 for lam in self.lambdas):
            raise ValueError("lambdas must lie in [0, 1]")
        if self.lambdas == []:
            raise ValueError("lambdas: give at least one λ, or leave it out for the default grid")
        return self


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config (ConfigError naming the file and key)."""
    config: TrainConfig = load_yaml_model(path, TrainConfig)
    return config
