"""MLflow runs in a temporary SQLite store, read back through MLflow's own client; the train CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from confroute.cli import app
from confroute.manifest import Manifest
from confroute.panel import load_panel
from training.config import Sweep, Tracking, TrainConfig
from training.tracking import DEFAULT_URI, resolve_uri
from training.train import TrainResult, load_dataset, read_feature_table, sweep

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
TRACES = REFERENCE / "multiarith_test.traces.npz"
PANEL = ROOT / "configs/panel.cpu.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture(scope="module")
def results(store: Path) -> list[TrainResult]:
    config = TrainConfig(
        panel=PANEL, traces=[TRACES], max_items=100, bootstrap=50, models_dir=store / "models",
        tracking=Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="test"),
        sweep=Sweep(classifiers=["lightgbm", "logistic"], calibrations=["sigmoid"]))
    return sweep(config)


def test_sweep_logs_one_run_per_combination(store: Path, results: list[TrainResult]) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("test")
    assert exp is not None and exp.artifact_location == (store / "artifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r.run_id for r in results)
    panel = load_panel(PANEL).names
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["calibration"] == "sigmoid"
        assert run.data.params["ece_binning"] == "10 equal-mass bins"
        assert {f"ece.{m}" for m in panel} | {f"brier.{m}" for m in panel} <= set(run.data.metrics)
        defined = [m for r in results for m, v in r.metrics.items() if 0 < v["n_correct"] < v["n"]]
        assert defined and {f"auroc.{m}" for m in defined} <= set(run.data.metrics)
        assert all(run.data.metrics[f"parity_max_abs.{m}"] <= 1e-5 for m in panel)
    assert {r.data.params["classifier"] for r in runs} == {"lightgbm", "logistic"}


def test_run_holds_figures_and_the_exported_model(store: Path, results: list[TrainResult]) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    run_id = results[0].run_id
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"figures/reliability.png", "figures/importances.png"} <= figures
    model = {a.path for a in client.list_artifacts(run_id, "model")}
    onnx = {f"model/{m}.onnx" for m in load_panel(PANEL).names}
    assert model == {"model/manifest.json", "model/heldout_items.json",
                     "model/training_items.json"} | onnx
    local = Path(client.download_artifacts(run_id, "model/manifest.json", str(store)))
    assert json.loads(local.read_text())["mlflow_run_id"] == run_id
    assert Manifest.load(results[0].version_dir).mlflow_run_id == run_id
    assert not (store / "models" / "current").exists()  # a sweep leaves `current` alone


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == DEFAULT_URI == "sqlite:///mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert resolve_uri(None) == "sqlite:///elsewhere.db"
    assert resolve_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_cli_trains_from_a_ready_table_with_extra_signal(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(panel=PANEL, traces=[TRACES], max_items=100)
    table = load_dataset(config, load_panel(PANEL)).table
    table["verifier_score"] = table["answer_logprob"].fillna(-5.0) * 0.5  # a non-logprob signal
    table.loc[::40, "answer_logprob"] = -np.inf  # what real backends return for some answers
    table.to_csv(tmp_path / "features.csv", index=False)
    (tmp_path / "train.yaml").write_text(
        f"panel: {PANEL}\nclassifier: logistic\nbootstrap: 20\nfigures: false\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    args = ["train", "--config", str(tmp_path / "train.yaml"), "--table",
            str(tmp_path / "features.csv"), "--out", str(tmp_path / "models")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # exported, but not made current: the service computes FEATURE_NAMES and could not serve it
    assert not (tmp_path / "models" / "current").exists()
    assert "current was left alone" in result.output
    [version] = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    manifest = Manifest.load(version)
    assert manifest.feature_names[-1] == "verifier_score"
    read, _ = read_feature_table(tmp_path / "features.csv")  # -inf: the column's finite minimum
    assert np.isfinite(read["answer_logprob"].dropna()).all()
    assert read["answer_logprob"].min() == table["answer_logprob"][np.isfinite(
        table["answer_logprob"])].min()
    verify = ["models", "verify", str(version), "--models-dir", str(tmp_path / "models")]
    assert CliRunner().invoke(app, verify).exit_code == 2  # not this build's FEATURE_NAMES
    assert CliRunner().invoke(app, [*verify, "--table-features"]).exit_code == 0


def test_evaluate_judges_a_policy_on_any_labeled_table(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table of two signals that are not logprob summaries (one with -inf), no answers, no
    datasets: `train --table` then `evaluate --table` on its held-out items, end to end."""
    config = TrainConfig(panel=PANEL, traces=[TRACES], max_items=120)
    full = load_dataset(config, load_panel(PANEL)).table
    table = full[["item_id", "model", "correct", "cost"]].copy()
    table["verifier_score"] = full["answer_logprob"].fillna(-5.0) * 0.5
    table["judge"] = full["answer_min_logprob"].fillna(-9.0)
    table.loc[::30, "judge"] = -np.inf
    table.to_csv(tmp_path / "mine.csv", index=False)
    (tmp_path / "train.yaml").write_text(
        f"panel: {PANEL}\nclassifier: logistic\nbootstrap: 0\nfigures: false\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    models = tmp_path / "models"
    trained = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml"),
                                       "--table", str(tmp_path / "mine.csv"), "--out", str(models)])
    assert trained.exit_code == 0, trained.output
    [version] = [p for p in models.iterdir() if p.is_dir()]
    args = ["evaluate", "--version", str(version), "--table", str(tmp_path / "mine.csv"),
            "--out", str(tmp_path / "eval"), "--no-mlflow"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    held = json.loads((version / "heldout_items.json").read_text())
    assert report["n_items"] == len(held["items"] if isinstance(held, dict) else held)
    assert set(report["apgr"]["methods"]) == {"router", "single_models", "random_mixing",
                                              "route_thresholds", "tuned_on_test", "oracle"}
    assert "no avg_logprob/margin" in result.output
    # the one-threshold baseline on a named column, and a table of questions the version never saw
    fresh = table.assign(item_id="new-" + table["item_id"].astype(str))
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    new = [*args[:4], str(tmp_path / "fresh.csv"), "--out", str(tmp_path / "eval-new"),
           "--no-mlflow", "--baseline-column", "judge"]
    result = CliRunner().invoke(app, new)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-new" / "report.json").read_text())
    assert report["n_items"] == fresh["item_id"].nunique()  # every new question, not a slice
    assert "not fitted on" in report["items_source"]
    assert report["baselines"]["column_threshold"]["column"] == "judge"
    assert report["apgr"]["methods"]["column_threshold"]["apgr"] is not None
    nope = CliRunner().invoke(app, [*new[:-1], "nope"])
    assert nope.exit_code == 2 and "'nope'" in nope.output and "Traceback" not in nope.output
    own = table[table["item_id"].isin(json.loads((version / "training_items.json").read_text()))]
    own.to_csv(tmp_path / "own.csv", index=False)
    only = CliRunner().invoke(app, [*args[:4], str(tmp_path / "own.csv"), *args[5:]])
    assert only.exit_code == 2 and "training item" in only.output
    # the learning curve refits on the table (it read no traces and failed in scikit-learn)
    curve = CliRunner().invoke(app, [*args, "--learning-curve", "--repeats", "2", "--config",
                                     str(tmp_path / "train.yaml")])
    assert curve.exit_code == 0, curve.output
    gen = json.loads((tmp_path / "eval" / "generalisation.json").read_text())
    assert {r["size"] for r in gen["learning_curve"]["runs"]} == {"50", "100", "200", "all"}
    loso = CliRunner().invoke(app, [*args, "--leave-one-set-out", "--config",
                                    str(tmp_path / "train.yaml")])
    assert loso.exit_code == 2 and "'dataset' column" in loso.output
    both = CliRunner().invoke(app, [*args, "--traces", str(TRACES)])
    assert both.exit_code == 2 and "--traces or --table" in both.output
    table.drop(columns="judge").to_csv(tmp_path / "less.csv", index=False)
    less = CliRunner().invoke(app, [*args[:4], str(tmp_path / "less.csv"), *args[5:]])
    assert less.exit_code == 2 and "'judge'" in less.output and "Traceback" not in less.output


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("classifer: lightgbm\n")
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml")])
    assert result.exit_code == 2 and "classifer" in result.output
    assert "Traceback" not in result.output


def test_a_moved_store_is_repointed_before_it_is_written(tmp_path: Path) -> None:
    """The shipped mlruns/ in a checkout elsewhere: MLflow recorded the old folder's absolute
    path, so without repointing a new run writes into the old checkout and the shipped runs'
    artifacts are not found. Here the old folder is gone; nothing may recreate it."""
    import shutil

    from training.tracking import relocate, start_run

    old, new = tmp_path / "old checkout" / "mlruns", tmp_path / "new" / "mlruns"
    old.mkdir(parents=True)
    (tmp_path / "a.txt").write_text("first")
    with start_run(f"sqlite:///{old}/mlflow.db", "moved", run_name="first") as run:
        run.log_artifact(tmp_path / "a.txt", "files")
    first = run.run_id
    own = (tmp_path / "old checkout" / "team" / "artifacts").as_uri()  # a location a user chose
    theirs = MlflowClient(f"sqlite:///{old}/mlflow.db").create_experiment("theirs", own)
    shutil.move(old, new)
    shutil.rmtree(tmp_path / "old checkout")

    uri = f"sqlite:///{new}/mlflow.db"
    (tmp_path / "b.txt").write_text("second")
    with start_run(uri, "moved", run_name="second") as run:
        run.log_artifact(tmp_path / "b.txt", "files")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("moved")
    assert exp is not None and exp.artifact_location == (new / "artifacts").as_uri()
    assert not (tmp_path / "old checkout").exists()
    assert (new / "artifacts" / run.run_id / "artifacts" / "files" / "b.txt").read_text() == "second"
    got = Path(client.download_artifacts(first, "files/a.txt", str(tmp_path)))
    assert got.read_text() == "first"  # the shipped run's artifacts, found in the new folder
    assert relocate(uri) == 0  # in place now: nothing to change
    assert client.get_experiment(theirs).artifact_location == own  # not confroute's to move
