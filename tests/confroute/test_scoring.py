"""The runtime scorer on a version trained from the real reference traces (onnxruntime only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from confroute.features import FEATURE_NAMES, extract_signals
from confroute.manifest import ManifestError
from confroute.panel import load_panel
from confroute.scoring import Scorer
from confroute.traces import read_traces
from training.config import TrainConfig
from training.train import Built, Dataset, build_version, load_dataset

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
TRACES = REFERENCE / "multiarith_test.traces.npz"
PANEL = ROOT / "configs/panel.cpu.yaml"


@pytest.fixture(scope="module")
def data() -> Dataset:
    config = TrainConfig(panel=PANEL, traces=[TRACES])
    return load_dataset(config, load_panel(PANEL))


@pytest.fixture(scope="module")
def built(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Built:
    config = TrainConfig(panel=PANEL, traces=[TRACES], bootstrap=0,
                         models_dir=tmp_path_factory.mktemp("models"))
    return build_version(config, data, load_panel(PANEL))


def test_predicts_what_the_python_model_does(data: Dataset, built: Built) -> None:
    scorer = Scorer.load(built.version_dir)
    assert scorer.version == built.version_dir.name
    assert scorer.models == load_panel(PANEL).names
    assert any(clf.kind_ == "lightgbm" for clf in built.fitted.values())
    for name, clf in built.fitted.items():
        X = data.table[data.table["model"] == name][data.features].to_numpy(float)
        p = scorer.predict(name, X)
        assert p.shape == (len(X),) and p.dtype == np.float64
        assert np.abs(p - clf.predict_proba(X)[:, 1]).max() <= 1e-5
        assert scorer.predict(name, X[0]).shape == (1,)  # one row as a vector


def test_rows_without_logprobs_get_nan(data: Dataset, built: Built) -> None:
    scorer = Scorer.load(built.version_dir)
    name = scorer.models[-1]
    X = data.table[data.table["model"] == name][data.features].to_numpy(float, copy=True)[:4]
    X[1:3, FEATURE_NAMES.index("has_logprobs")] = 0.0
    X[1:3, 1:13] = np.nan  # what the feature code gives a trace without logprobs
    p = scorer.predict(name, X)
    assert np.isnan(p[1:3]).all() and np.isfinite(p[[0, 3]]).all()
    X[2, FEATURE_NAMES.index("has_logprobs")] = np.nan
    for row, scored in ((X[0], True), (X[1], False), (X[2], False)):  # one row at a time, as served
        assert np.isfinite(scorer.predict(name, row)[0]) == scored


def test_traces_score_like_the_training_table(data: Dataset, built: Built) -> None:
    scorer = Scorer.load(built.version_dir)
    items = set(data.table["item_id"].unique()[:10])
    traces = [t for t in read_traces(TRACES) if t.item_id in items]
    rank = {m: i for i, m in enumerate(scorer.models)}
    answers = {(t.item_id, rank[t.model]): t.prediction for t in traces}
    config = scorer.manifest.feature_config.config()
    got = [scorer.predict(t.model, extract_signals(
        t, previous=[answers.get((t.item_id, j)) for j in range(rank[t.model])], config=config,
    ))[0] for t in traces]
    rows = data.table.set_index(["item_id", "model"])
    for t, p in zip(traces, got, strict=True):
        x = rows.loc[(t.item_id, t.model), data.features].to_numpy(float)
        assert p == pytest.approx(scorer.predict(t.model, x)[0], abs=1e-9)  # agree_prev included


def test_bad_input_is_a_clear_error(built: Built) -> None:
    scorer = Scorer.load(built.version_dir)
    with pytest.raises(ValueError, match=f"shape \\(n, {len(FEATURE_NAMES)}\\)"):
        scorer.predict(scorer.models[0], np.zeros((2, 3)))
    with pytest.raises(KeyError, match="not in version"):
        scorer.predict("gpt-5", np.zeros((1, len(FEATURE_NAMES))))


def test_tampered_version_is_not_loaded(built: Built, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(built.version_dir, tmp_path / "v"))
    raw = json.loads((copy / "manifest.json").read_text())
    raw["feature_names"] = raw["feature_names"][::-1]
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="feature order"):
        Scorer.load(copy)


def test_serving_imports_neither_lightgbm_nor_sklearn(built: Built) -> None:
    code = (
        "import sys, numpy as np\n"
        "from confroute.scoring import Scorer\n"
        f"s = Scorer.load({str(built.version_dir)!r})\n"
        "p = s.predict(s.models[-1], np.zeros((1, len(s.manifest.feature_names))) + 1.0)\n"
        "assert p.shape == (1,), p\n"
        "print(sorted(m for m in ('lightgbm', 'sklearn', 'mlflow', 'training') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
