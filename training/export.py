"""Export a fitted panel to models/<version>/: ONNX per model, manifest, parity check, `current`.

Each ONNX graph is the *base* classifier only, with one output "p_correct" (n,) = its
uncalibrated P(correct); the calibrator goes into the manifest (DESIGN.md: the ONNX converter for
CalibratedClassifierCV gave silently wrong probabilities). Every export reloads the version
through the runtime scorer (onnxruntime) and compares its calibrated probabilities with the
Python model's on the given rows; a difference above 1e-5 fails the export and leaves nothing
behind. The version directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from confroute.manifest import (
    FeatureSpec,
    Manifest,
    ModelEntry,
    PanelInfo,
    file_hashes,
    switch_current,
)
from confroute.scoring import Scorer
from training.classifiers import spec_of
from training.fit import CorrectnessClassifier

PARITY_TOL = 1e-5
OUTPUT = "p_correct"
LIBRARIES = ("numpy", "scikit-learn", "lightgbm", "onnx", "onnxruntime", "onnxmltools", "skl2onnx")


HELDOUT_ITEMS = "heldout_items.json"  # test-split item ids, read by training.evaluate
TRAINING_ITEMS = "training_items.json"  # the item ids it was fitted on: evaluate leaves them out


class ExportError(RuntimeError):
    """An export that would not serve what was trained (parity) or could not be written."""


def new_version_id(now: dt.datetime | None = None) -> str:
    """v<YYYYMMDD>-<HHMM>-<6 hex>, UTC: sorts by time, unique within the minute."""
    now = now or dt.datetime.now(dt.UTC)
    return f"v{now:%Y%m%d-%H%M}-{secrets.token_hex(3)}"


def to_onnx(clf: CorrectnessClassifier) -> onnx.ModelProto:
    """The fitted base classifier as ONNX: input "X" float32 (n, F), output "p_correct" (n,)."""
    n = clf.n_features_in_
    if clf.kind_ == "prior":
        return _constant_onnx(n, float(clf.estimator_.p_))
    model = spec_of(clf.kind_).to_onnx(clf.estimator_, n)
    return _p_correct_output(model)


def _constant_onnx(n_features: int, p: float) -> onnx.ModelProto:
    """A graph that answers the same P(correct) for every row (the base-rate fallback)."""
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["rows"]),
        helper.make_node("ConstantOfShape", ["rows"], [OUTPUT],
                         value=helper.make_tensor("p", onnx.TensorProto.FLOAT, [1], [p])),
    ]
    graph = helper.make_graph(
        nodes, "prior",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, [None])],
        initializer=[helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0]),
                     helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _p_correct_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the graph's outputs with column 1 of its probabilities, named "p_correct"."""
    graph = model.graph
    probs = next(o.name for o in graph.output if "prob" in o.name)
    graph.initializer.append(helper.make_tensor("confroute_col1", onnx.TensorProto.INT64, [], [1]))
    graph.node.append(helper.make_node("Gather", [probs, "confroute_col1"], [OUTPUT], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, [None]))
    onnx.checker.check_model(model)
    return model


def libraries() -> dict[str, str]:
    """Versions of the libraries that produced (and will read) the version."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = package_version(name)
        except PackageNotFoundError:
            continue
    return out


def export_version(
    models_dir: str | Path,
    fitted: dict[str, CorrectnessClassifier],
    parity_rows: dict[str, np.ndarray],
    *,
    panel: PanelInfo,
    feature_names: Sequence[str],
    feature_config: FeatureSpec,
    policy: dict[str, Any] | None,
    metrics: dict[str, dict[str, Any]],
    mlflow_run_id: str | None,
    switch: bool = True,
    mlflow_tracking_uri: str | None = None,
    heldout_items: Sequence[str] = (),
    training_items: Sequence[str] = (),
) -> tuple[Path, dict[str, float]]:
    """Write, verify and parity-check a version; return its directory and max |diff| per model."""
    models_dir = Path(models_dir)
    version = new_version_id()
    tmp = models_dir / f".tmp-{version}"
    tmp.mkdir(parents=True)
    try:
        entries = {name: _write_model(tmp, name, clf, metrics.get(name, {}))
                   for name, clf in fitted.items()}
        extra = []
        # the items no classifier or policy was fitted on, and those they were: evaluate replays
        # every item of a new table that is not a training item
        for name, ids in ((HELDOUT_ITEMS, heldout_items), (TRAINING_ITEMS, training_items)):
            if ids:
                (tmp / name).write_text(json.dumps(sorted(ids), indent=0) + "\n")
                extra.append(name)
        Manifest(
            version=version, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            panel=panel, feature_names=list(feature_names), feature_config=feature_config,
            models=entries, policy=policy, metrics=jsonable(_overall(metrics)),
            mlflow_run_id=mlflow_run_id, mlflow_tracking_uri=mlflow_tracking_uri,
            libraries=libraries(),
            files=file_hashes(tmp, [e.file for e in entries.values()] + extra),
        ).write(tmp)
        diffs = parity(tmp, fitted, parity_rows, feature_names)
        final = models_dir / version
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if switch:
        switch_current(models_dir, version)
    return final, diffs


def _write_model(
    version_dir: Path, name: str, clf: CorrectnessClassifier, metrics: dict[str, Any]
) -> ModelEntry:
    """One model's ONNX file and manifest entry (calibration carried explicitly)."""
    file = f"{name}.onnx"
    (version_dir / file).write_bytes(to_onnx(clf).SerializeToString())
    return ModelEntry(file=file, classifier=clf.kind_,
                      calibration=clf.calibrator_.to_manifest(), output=OUTPUT,
                      metrics=jsonable(metrics))


def parity(
    version_dir: Path, fitted: dict[str, CorrectnessClassifier], rows: dict[str, np.ndarray],
    feature_names: Sequence[str],
) -> dict[str, float]:
    """Max |runtime p - Python p| per model on rows with logprobs; ExportError above 1e-5."""
    scorer = Scorer.load(version_dir, feature_names)
    diffs = {}
    for name, clf in fitted.items():
        X = rows[name]
        got = scorer.predict(name, X)
        want = clf.predict_proba(X)[:, 1]
        scored = ~np.isnan(got)
        diffs[name] = float(np.max(np.abs(got[scored] - want[scored]), initial=0.0))
        if diffs[name] > PARITY_TOL:
            raise ExportError(f"{name}: ONNX + manifest calibration differs from the Python model "
                              f"by {diffs[name]:.2e} (> {PARITY_TOL:g}) on {scored.sum()} rows")
    return diffs


def _overall(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers across models: held-out AUROC, ECE and log loss per model."""
    keys = ("auroc", "ece", "brier", "log_loss", "n")
    return {f"{k}.{name}": m[k] for name, m in metrics.items() for k in keys if k in m}


def jsonable(value: Any) -> Any:
    """Metrics as strict JSON: NaN/inf become null, numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
