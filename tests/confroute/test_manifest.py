"""Manifest verification on a real exported version: a mismatch is refused with a clear error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confroute.cli import app
from confroute.features import FEATURE_NAMES, FeatureConfig
from confroute.manifest import (
    CURRENT,
    Manifest,
    ManifestError,
    resolve_current,
    resolve_version,
    switch_current,
    verify,
)
from confroute.panel import load_panel
from training.config import TrainConfig
from training.train import build_version, load_dataset

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
PANEL = ROOT / "configs/panel.cpu.yaml"


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version trained on a slice of the reference traces (logistic + sigmoid: quick)."""
    config = TrainConfig(panel=PANEL, traces=[REFERENCE / "multiarith_test.traces.npz"],
                         max_items=60, bootstrap=0, classifier="logistic", calibration="sigmoid",
                         models_dir=tmp_path_factory.mktemp("models"))
    panel = load_panel(PANEL)
    return build_version(config, load_dataset(config, panel), panel).version_dir


@pytest.fixture
def copy(version: Path, tmp_path: Path) -> Path:
    """A private copy of the version, free to tamper with."""
    return Path(shutil.copytree(version, tmp_path / version.name))


def _edit_manifest(path: Path, **changes: object) -> None:
    raw = json.loads((path / "manifest.json").read_text())
    raw.update(changes)
    (path / "manifest.json").write_text(json.dumps(raw))


def test_a_good_version_verifies(version: Path) -> None:
    m = verify(version)
    assert m.version == version.name and m.panel.names == load_panel(PANEL).names
    assert m.feature_names == list(FEATURE_NAMES)
    assert Manifest.load(version) == m


def test_wrong_feature_order_is_refused(copy: Path) -> None:
    names = list(FEATURE_NAMES)
    names[1], names[2] = names[2], names[1]
    _edit_manifest(copy, feature_names=names)
    with pytest.raises(ManifestError, match=r"feature order differs .* position 1"):
        verify(copy)


def test_edited_model_file_is_refused(copy: Path) -> None:
    onnx = next(copy.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match=f"{onnx.name} was modified"):
        verify(copy)


def test_missing_model_file_is_refused(copy: Path) -> None:
    onnx = next(copy.glob("*.onnx"))
    onnx.unlink()
    with pytest.raises(ManifestError, match=f"{onnx.name} is missing"):
        verify(copy)


def test_panel_model_without_classifier_is_refused(copy: Path) -> None:
    raw = json.loads((copy / "manifest.json").read_text())
    first = raw["panel"]["models"][0]["name"]
    del raw["models"][first]
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=f"no classifier for panel model '{first}'"):
        verify(copy)


def _tamper(raw: dict, how: str) -> None:
    names = [m["name"] for m in raw["panel"]["models"]]
    if how == "panel model removed":
        raw["panel"]["models"] = raw["panel"]["models"][1:]
    elif how == "route to an unknown model":  # the cascade policy: a start at an unknown model
        raw["policy"]["rows"][0]["start"]["gpt-9"] = [0.0, 0.0, 0.0]
    elif how == "no policy rows":
        raw["policy"]["rows"] = []
    elif how == "two models, one file":
        raw["models"][names[1]]["file"] = raw["models"][names[0]]["file"]
    elif how == "negative window":
        raw["feature_config"]["group_window"] = -4
    elif how == "NaN in a sigmoid":  # json writes NaN; a reload once accepted it
        raw["models"][names[0]]["calibration"] = {"method": "sigmoid", "a": float("nan"), "b": 0.0}
    elif how == "NaN in isotonic knots":  # passes an order check: every comparison is false
        raw["models"][names[0]]["calibration"] = {"method": "isotonic", "x": [0.0, float("nan"), 1.0],
                                                  "y": [0.1, 0.5, 0.9]}
    elif how == "isotonic p above 1":
        raw["models"][names[0]]["calibration"] = {"method": "isotonic", "x": [0.0, 1.0],
                                                  "y": [0.1, 1.5]}


@pytest.mark.parametrize(("how", "words"), [
    ("panel model removed", "do not match the panel"),
    ("route to an unknown model", "policy: .*start weights must name panel models"),
    ("no policy rows", "policy: .*non-empty"),
    ("two models, one file", "one file each"),
    ("negative window", "invalid manifest at feature_config: .*group_window >= 1"),
    ("NaN in a sigmoid", "invalid manifest at models.*calibration.*finite"),
    ("NaN in isotonic knots", "invalid manifest at models.*calibration.*finite"),
    ("isotonic p above 1", "invalid manifest at models.*calibration.*less than or equal to 1"),
])
def test_a_manifest_that_does_not_hang_together_is_refused(copy: Path, how: str,
                                                           words: str) -> None:
    """The manifest holds the hashes, so it is not hashed itself: what it says must agree."""
    raw = json.loads((copy / "manifest.json").read_text())
    _tamper(raw, how)
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=words):
        verify(copy)


def test_malformed_manifest_names_the_field(copy: Path) -> None:
    _edit_manifest(copy, format=2)
    with pytest.raises(ManifestError, match="invalid manifest at format"):
        verify(copy)
    with pytest.raises(ManifestError, match="does not exist"):
        verify(copy.parent / "nowhere")


def test_current_switches_atomically(version: Path, copy: Path) -> None:
    models = copy.parent
    switch_current(models, copy.name)
    assert resolve_current(models) == copy.resolve()
    second = Path(shutil.copytree(copy, models / "v-second"))
    switch_current(models, second.name)
    assert resolve_current(models) == second.resolve()
    assert os.readlink(models / CURRENT) == "v-second"  # relative: the folder can move
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []
    assert resolve_version(models, None) == second.resolve()
    assert resolve_version(models, copy.name) == copy
    with pytest.raises(ManifestError, match="no model version 'v-none'"):
        resolve_version(models, "v-none")
    with pytest.raises(ManifestError, match="not a model version directory"):
        switch_current(models, "v-none")


@pytest.mark.parametrize("group", ["versions", "models"])  # `models verify`: the older name
def test_cli_verify(copy: Path, group: str) -> None:
    runner = CliRunner()
    switch_current(copy.parent, copy.name)
    ok = runner.invoke(app, [group, "verify", "--models-dir", str(copy.parent)])
    assert ok.exit_code == 0 and f"ok {copy.name}" in ok.output
    onnx = next(copy.glob("*.onnx"))
    onnx.write_bytes(b"tampered")
    bad = runner.invoke(app, [group, "verify", copy.name, "--models-dir", str(copy.parent)])
    assert bad.exit_code == 2 and "was modified" in bad.output and "Traceback" not in bad.output


def test_cli_versions_list_marks_the_served_one(copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    second = copy.parent / "v-second"
    shutil.copytree(copy, second)
    raw = json.loads((second / "manifest.json").read_text())
    (second / "manifest.json").write_text(json.dumps({**raw, "version": "v-second"}))
    switch_current(copy.parent, "v-second")
    out = runner.invoke(app, ["versions", "list", "--models-dir", str(copy.parent)])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if "v-second" in line or copy.name in line]
    assert len(rows) == 2 and "*" in next(r for r in rows if "v-second" in r)
    assert "*" not in next(r for r in rows if copy.name in r) and "cascade" in rows[0]
    empty = runner.invoke(app, ["versions", "list", "--models-dir", str(tmp_path / "none")])
    assert empty.exit_code == 2 and "no versions" in empty.output


def test_a_version_written_before_the_typed_spec_still_loads(copy: Path) -> None:
    """Older manifests kept the grader beside a bare window dict: it moves into the spec."""
    raw = json.loads((copy / "manifest.json").read_text())
    raw["grader"] = "exact"
    raw["feature_config"] = {k: raw["feature_config"][k] for k in ("group_window", "tail",
                                                                   "bottom_frac")}
    (copy / "manifest.json").write_text(json.dumps(raw))
    m = Manifest.load(copy)
    assert m.grader == m.feature_config.grader == "exact"
    assert m.feature_config.config() == FeatureConfig()
    assert "grader" not in m.model_dump() and m.model_dump()["feature_config"]["grader"] == "exact"


def test_an_unknown_grader_or_token_filter_is_refused(copy: Path) -> None:
    for key, value in (("grader", "fuzzy"), ("token_filter", "tool_call_args")):
        raw = json.loads((copy / "manifest.json").read_text())
        raw["feature_config"][key] = value
        (copy / "manifest.json").write_text(json.dumps(raw))
        with pytest.raises(ManifestError, match=f"invalid manifest at feature_config.{key}"):
            Manifest.load(copy)
