"""The model-version manifest (models/<version>/manifest.json): read, verify, write; `current`.

A version directory holds one ONNX file per panel model and `manifest.json`, which names the panel
and costs, the feature order, each model's calibration (applied with numpy after the ONNX graph),
the policy table, metrics, the MLflow run id, library versions and the sha256 of every other file.
Verification refuses a version whose files, feature order or panel do not match, with a message
that says which.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from confroute.features import FEATURE_NAMES, FeatureConfig
from confroute.grading import DEFAULT_GRADER
from confroute.modelstore import sha256_file

MANIFEST = "manifest.json"
CURRENT = "current"


class ManifestError(ValueError):
    """A version that cannot be served: missing, edited or inconsistent files; says which."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Isotonic(_Frozen):
    """Isotonic calibration as its knot table: p = np.interp(f, x, y)."""

    method: Literal["isotonic"] = "isotonic"
    x: list[FiniteFloat]  # NaN would pass the order check below (every comparison is false)
    y: list[Annotated[float, Field(ge=0.0, le=1.0)]]  # probabilities

    @model_validator(mode="after")
    def _table(self) -> Isotonic:
        if not self.x or len(self.x) != len(self.y):
            raise ValueError("isotonic x and y must be non-empty and of equal length")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("isotonic x must be sorted ascending")
        return self


class Sigmoid(_Frozen):
    """Platt scaling in scikit-learn's convention: p = 1 / (1 + exp(a*f + b))."""

    method: Literal["sigmoid"] = "sigmoid"
    a: FiniteFloat
    b: FiniteFloat


class Identity(_Frozen):
    """No calibration: the base classifier's probability as it is."""

    method: Literal["none"] = "none"


Calibration = Annotated[Isotonic | Sigmoid | Identity, Field(discriminator="method")]


_DEFAULT = FeatureConfig()


class FeatureSpec(_Frozen):
    """How a version's signals are computed: window sizes, which tokens are read, the grader.

    Written from the training config into the manifest; the service computes every answer's row
    with exactly this (a conflicting CONFROUTE_GRADER is refused). The bounds are
    FeatureConfig's, checked once, there."""

    group_window: int = _DEFAULT.group_window
    tail: int = _DEFAULT.tail
    bottom_frac: float = _DEFAULT.bottom_frac
    # the one filter implemented: every token but special and stop tokens (the looper's `all`
    # and `stop` both mean this; see looper.py)
    token_filter: Literal["non_special"] = "non_special"
    # the grader the answer_* and agree_prev signals were computed with
    grader: Literal["numeric", "exact", "choice"] = DEFAULT_GRADER

    @model_validator(mode="after")
    def _windows(self) -> FeatureSpec:
        self.config()  # FeatureConfig's ValueError names the bounds
        return self

    def config(self) -> FeatureConfig:
        """The numeric windows, as the feature kernel takes them."""
        return FeatureConfig(self.group_window, self.tail, self.bottom_frac)


class ModelEntry(_Frozen):
    """One panel model: ONNX file (input "X", output "p_correct"), calibration, metrics."""

    file: str
    # the kind that was fitted (training/classifiers.py; "prior": too few answers, base rate);
    # the runtime only reads the ONNX graph, so any kind the training side knows is accepted
    classifier: str = Field(min_length=1)
    calibration: Calibration
    input: str = "X"
    output: str = "p_correct"
    metrics: dict[str, Any] = {}


class PanelModelInfo(_Frozen):
    name: str
    cost: dict[str, float]


class PanelInfo(_Frozen):
    """The panel the version was trained for, cheapest model first."""

    name: str
    models: list[PanelModelInfo]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


class Manifest(_Frozen):
    """Typed manifest.json (format 1)."""

    format: Literal[1] = 1
    version: str
    created: str
    panel: PanelInfo
    feature_names: list[str]
    feature_config: FeatureSpec = FeatureSpec()
    models: dict[str, ModelEntry]
    policy: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None  # the store that run is in (evaluate logs there)
    libraries: dict[str, str] = {}
    files: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _grader_in_spec(cls, data: Any) -> Any:
        """Versions written before the typed spec kept the grader beside it: move it in."""
        if isinstance(data, dict) and "grader" in data and isinstance(data.get("feature_config"),
                                                                      dict):
            data = dict(data)
            data["feature_config"] = {**data["feature_config"], "grader": data.pop("grader")}
        return data

    @property
    def grader(self) -> str:
        """The grader this version's signals were computed with (the service uses it)."""
        return self.feature_config.grader

    @classmethod
    def load(cls, version_dir: str | Path) -> Manifest:
        """Parse `<version_dir>/manifest.json`; ManifestError if absent or malformed."""
        path = Path(version_dir) / MANIFEST
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ManifestError(f"{path} does not exist (not a model version directory?)") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ManifestError(f"{path}: invalid manifest at {where}: {first['msg']}") from None

    def write(self, version_dir: str | Path) -> Path:
        """Write manifest.json (pretty, stable key order) into the version directory."""
        path = Path(version_dir) / MANIFEST
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        return path


def file_hashes(version_dir: str | Path, names: Sequence[str]) -> dict[str, str]:
    """sha256 of each named file in the version directory."""
    return {name: sha256_file(Path(version_dir) / name) for name in names}


def verify(
    version_dir: str | Path, feature_names: Sequence[str] | None = FEATURE_NAMES
) -> Manifest:
    """Check a version: files present with their sha256, feature order, one file per panel model.

    `feature_names=None` accepts the manifest's own order (versions trained on a custom table).
    """
    version_dir = Path(version_dir)
    m = Manifest.load(version_dir)
    if feature_names is not None:
        _check_features(m.feature_names, list(feature_names))
    _check_models(m)
    for name, digest in m.files.items():
        path = version_dir / name
        if not path.is_file():
            raise ManifestError(f"version {m.version}: file {name} is missing from {version_dir}")
        if sha256_file(path) != digest:
            raise ManifestError(
                f"version {m.version}: {name} was modified (sha256 differs from the manifest)"
            )
    return m


def _check_features(found: list[str], expected: list[str]) -> None:
    if found == expected:
        return
    for i, (f, e) in enumerate(zip(found, expected, strict=False)):
        if f != e:
            raise ManifestError(
                f"feature order differs from this build's at position {i}: manifest has {f!r}, "
                f"expected {e!r}; retrain, or use a build with the manifest's features"
            )
    raise ManifestError(f"manifest has {len(found)} features, this build computes {len(expected)}")


def _check_models(m: Manifest) -> None:
    """One classifier file per panel model, a policy over exactly that panel, sane windows.

    The manifest itself is not hashed (it holds the hashes), so what it says must hang together.
    """
    from confroute.policies import load_policy

    for name in m.panel.names:
        entry = m.models.get(name)
        if entry is None:
            raise ManifestError(f"version {m.version}: no classifier for panel model {name!r}")
        if entry.file not in m.files:
            raise ManifestError(f"version {m.version}: {entry.file} has no sha256 in the manifest")
    extra = sorted(set(m.models) - set(m.panel.names))
    files = [m.models[n].file for n in m.panel.names]
    if extra or len(set(files)) != len(files):
        raise ManifestError(f"version {m.version}: classifiers {sorted(m.models)} do not match the "
                            f"panel {m.panel.names} one file each ({files})")
    if m.policy is not None:
        try:
            policy = load_policy(m.policy)
        except ValueError as exc:
            raise ManifestError(f"version {m.version}: policy: {exc}") from None
        if list(policy.models) != list(m.panel.names):
            raise ManifestError(f"version {m.version}: the policy is over {list(policy.models)}, "
                                f"the panel is {m.panel.names}")


def resolve_version(models_dir: str | Path, version: str | None = None) -> Path:
    """A version directory: `version` by name (or path), else the one `current` points at."""
    if version is None:
        return resolve_current(models_dir)
    path = Path(version)
    if not path.is_dir():
        path = Path(models_dir) / version
    if not path.is_dir():
        raise ManifestError(f"no model version {version!r} in {models_dir}")
    return path


def resolve_current(models_dir: str | Path) -> Path:
    """The version directory `models_dir/current` points at."""
    link = Path(models_dir) / CURRENT
    if not link.exists():
        raise ManifestError(f"{link} does not exist: train a version first (confroute train)")
    return link.resolve()


def switch_current(models_dir: str | Path, version: str) -> Path:
    """Point `models_dir/current` at `version` atomically (a new symlink renamed over the old)."""
    models_dir = Path(models_dir)
    if not (models_dir / version / MANIFEST).is_file():
        raise ManifestError(f"{models_dir / version} is not a model version directory")
    check_current_link(models_dir)
    tmp = models_dir / f".{CURRENT}.{uuid.uuid4().hex}"
    os.symlink(version, tmp)  # relative: the models directory can move as a whole
    try:
        os.replace(tmp, models_dir / CURRENT)
    except OSError:
        tmp.unlink()  # no stray link left behind
        raise
    return models_dir / CURRENT


def check_current_link(models_dir: str | Path) -> None:
    """ManifestError unless `models_dir/current` is absent or a symlink: a real directory or
    file there would make switching fail after a whole fit (and is not confroute's)."""
    current = Path(models_dir) / CURRENT
    if current.exists() and not current.is_symlink():
        kind = "a directory" if current.is_dir() else "a file"
        raise ManifestError(f"{current} is {kind}, not the symlink confroute switches between "
                            "versions: move it away (or train into another --models-dir)")
