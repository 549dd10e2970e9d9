"""Export on a slice of the real reference traces: ONNX parity, manifest, atomic `current`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from confroute.features import FEATURE_NAMES
from confroute.manifest import Manifest, Sigmoid, resolve_current, verify
from confroute.panel import load_panel
from training.config import TrainConfig
from training.export import HELDOUT_ITEMS, PARITY_TOL, TRAINING_ITEMS, ExportError, export_version
from training.train import Dataset, build_version, load_dataset, panel_info

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
TRACES = REFERENCE / "multiarith_test.traces.npz"
PANEL = ROOT / "configs/panel.cpu.yaml"


@pytest.fixture(scope="module")
def data() -> Dataset:
    config = TrainConfig(panel=PANEL, traces=[TRACES])
    return load_dataset(config, load_panel(PANEL))


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    return TrainConfig(panel=PANEL, traces=[TRACES], bootstrap=20, models_dir=tmp_path, **kw)


@pytest.mark.parametrize("kind,calibration", [("lightgbm", "isotonic"), ("logistic", "sigmoid")])
def test_export_matches_python_through_onnxruntime(
    tmp_path: Path, data: Dataset, kind: str, calibration: str
) -> None:
    config = _config(tmp_path, classifier=kind, calibration=calibration)
    built = build_version(config, data, load_panel(PANEL))
    assert resolve_current(tmp_path) == built.version_dir.resolve()
    manifest = verify(built.version_dir)
    assert manifest.feature_names == list(FEATURE_NAMES)
    assert manifest.panel.names == load_panel(PANEL).names and manifest.policy is not None
    assert max(built.parity.values()) <= PARITY_TOL
    assert any(clf.kind_ == kind for clf in built.fitted.values())  # not only base-rate fallbacks
    for name, clf in built.fitted.items():  # reload with plain onnxruntime, calibrate by hand
        rows = data.table[(data.table["model"] == name) & data.test]
        X = rows[data.features].to_numpy(np.float32)
        sess = ort.InferenceSession(str(built.version_dir / f"{name}.onnx"))
        f = sess.run(["p_correct"], {"X": X})[0]
        assert f.shape == (len(rows),)
        cal = manifest.models[name].calibration
        p = np.interp(f, cal.x, cal.y) if cal.method == "isotonic" else (
            1 / (1 + np.exp(cal.a * f + cal.b)) if cal.method == "sigmoid" else f)
        assert np.abs(p - clf.predict_proba(X)[:, 1]).max() <= PARITY_TOL
        assert manifest.models[name].classifier == clf.kind_


def test_all_nan_and_constant_columns_survive_export(tmp_path: Path, data: Dataset) -> None:
    table = data.table.copy()
    table["agree_prev"] = np.nan  # no cheaper model anywhere
    table["truncated"] = 0.0
    nan_data = Dataset(table, data.features, data.test)
    for kind in ("logistic", "lightgbm"):
        built = build_version(_config(tmp_path, classifier=kind), nan_data, load_panel(PANEL))
        assert max(built.parity.values()) <= PARITY_TOL


def test_parity_failure_refuses_the_export(tmp_path: Path, data: Dataset,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path / "first", classifier="logistic", calibration="sigmoid")
    built = build_version(config, data, load_panel(PANEL))
    wrong = Sigmoid(a=-1.0, b=0.5)  # a calibrator the Python model does not use
    for clf in built.fitted.values():
        monkeypatch.setattr(clf.calibrator_, "to_manifest", lambda wrong=wrong: wrong)
    rows = {m: data.table[data.table["model"] == m][data.features].to_numpy(float)
            for m in built.fitted}
    out = tmp_path / "second"
    with pytest.raises(ExportError, match="differs from the Python model"):
        export_version(out, built.fitted, rows, panel=panel_info(load_panel(PANEL)),
                       feature_names=data.features, feature_config={}, policy=None, metrics={},
                       mlflow_run_id=None)
    assert list(out.iterdir()) == []  # nothing half-written, no `current`


def test_manifest_records_what_the_service_needs(tmp_path: Path, data: Dataset) -> None:
    built = build_version(_config(tmp_path, classifier="logistic"), data, load_panel(PANEL))
    raw = json.loads((built.version_dir / "manifest.json").read_text())
    assert raw["version"] == built.version_dir.name and raw["version"].startswith("v")
    assert set(raw["files"]) == {f"{m}.onnx" for m in load_panel(PANEL).names} | {
        HELDOUT_ITEMS, TRAINING_ITEMS}
    heldout = json.loads((built.version_dir / HELDOUT_ITEMS).read_text())
    assert set(heldout) == set(data.table.loc[data.test, "item_id"])  # what evaluate replays
    fitted_on = json.loads((built.version_dir / TRAINING_ITEMS).read_text())
    assert set(fitted_on) == set(data.table.loc[~data.test, "item_id"])  # what it leaves out
    assert {"lightgbm", "onnxruntime", "scikit-learn"} <= set(raw["libraries"])
    assert raw["feature_config"] == {"group_window": 16, "tail": 16, "bottom_frac": 0.1,
                                     "token_filter": "non_special", "grader": "numeric"}
    assert all(m["cost"] for m in raw["panel"]["models"])
    assert Manifest.load(built.version_dir).policy == raw["policy"]
