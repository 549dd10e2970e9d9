"""`confroute evaluate` on a real exported version: report structure, oracle bound, APGR by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from confroute.cli import app
from confroute.features import FEATURE_NAMES
from confroute.manifest import PanelInfo, PanelModelInfo
from confroute.panel import Panel, load_panel
from confroute.traces import Token, TopLogprob, Trace, Usage, write_traces
from training.config import TrainConfig
from training.cost_curves import apgr, oracle, upper_hull
from training.evaluate import BASELINES
from training.export import export_version
from training.fit import CorrectnessClassifier
from training.fit_policy import fit_policy
from training.table import build_table, complete_items
from training.train import build_version, load_dataset

PANEL = Path(__file__).parents[2] / "configs" / "panel.cpu.yaml"
REFERENCE = Path(__file__).parents[2] / "data" / "reference-traces" / "multiarith_test.traces.npz"


def _trace(item: int, model: str, right: bool, rng: np.random.Generator) -> Trace:
    """A graded trace whose token logprobs are higher, with wider margins, when it is right."""
    gold = str(item % 50 + 3)
    answer = gold if right else str(int(gold) + int(rng.integers(1, 30)))
    words = [f" w{k}" for k in range(int(rng.integers(8, 30)))] + [" The answer is:", f" {answer}"]
    center = rng.normal(-0.3 if right else -0.7, 0.3)  # per trace: the classes overlap
    spread = rng.normal(2.0 if right else 1.4, 0.6)
    tokens = []
    for w in words:
        lp = float(min(0.0, rng.normal(center, 0.3)))
        alts = [lp, lp - abs(rng.normal(spread, 0.5)), lp - 4.0]
        tokens.append(Token(w, lp, [TopLogprob(f"t{i}", a) for i, a in enumerate(alts)]))
    return Trace(item_id=f"synth/test/{item}", model=model, dataset="synth",
                 response="".join(words), tokens=tokens, gold=gold, prediction=answer,
                 correct=right, usage=Usage(60, len(tokens)))


def _traces(panel: Panel, n: int) -> list[Trace]:
    rng = np.random.default_rng(0)
    ease = rng.uniform(size=n)
    out = []
    for j, model in enumerate(panel.names):
        right = rng.uniform(size=n) < np.clip(ease - 0.55 + 0.3 * j, 0.05, 0.95)
        out += [_trace(i, model, bool(right[i]), rng) for i in range(n)]
    return out


def _export(table: pd.DataFrame, panel: Panel, models_dir: Path) -> Path:
    """Fit logistic + sigmoid per model and the policy on `table`; export a real version."""
    fitted, p = {}, {}
    for m in panel.names:
        rows = table[table["model"] == m]
        clf = CorrectnessClassifier("logistic", "sigmoid", folds=3).fit(
            rows[list(FEATURE_NAMES)].to_numpy(float), rows["correct"].to_numpy(),
            rows["item_id"].to_numpy())
        fitted[m], p[m] = clf, pd.Series(clf.oof_proba_, index=rows["item_id"])
    wide = table.pivot(index="item_id", columns="model", values=["correct", "cost"])
    probs = pd.DataFrame(p).loc[wide.index, panel.names].to_numpy()
    policy = fit_policy(probs, wide["correct"][panel.names].to_numpy(bool),
                        wide["cost"][panel.names].to_numpy(float), panel.names, n_bootstrap=50)
    info = PanelInfo(name=panel.name, models=[PanelModelInfo(name=m.name, cost=m.cost.model_dump())
                                              for m in panel.models])
    parity = {m: table[table["model"] == m][list(FEATURE_NAMES)].to_numpy(float)
              for m in panel.names}
    version, _ = export_version(models_dir, fitted, parity, panel=info, feature_names=FEATURE_NAMES,
                                feature_config={"group_window": 16, "tail": 16, "bottom_frac": 0.1},
                                policy=policy.to_dict(), metrics={}, mlflow_run_id=None,
                                switch=False)
    return version


def _setup(traces: list[Trace], panel: Panel, root: Path, fit_share: float) -> tuple[Path, ...]:
    """Write traces, fit a version on the first `fit_share` of items, list those items."""
    write_traces(root / "traces.jsonl", traces)
    table = complete_items(build_table(traces, panel), panel.names)
    items = sorted(set(table["item_id"]))
    fit_items = items[: int(len(items) * fit_share)]
    version = _export(table[table["item_id"].isin(fit_items)], panel, root / "models")
    (root / "fit_items.json").write_text(json.dumps(fit_items))
    return version, root / "traces.jsonl", root / "fit_items.json"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """A version fitted on 160 synthetic items; 80 more are held out."""
    panel = load_panel(PANEL)
    return _setup(_traces(panel, 240), panel, tmp_path_factory.mktemp("eval"), 2 / 3)


@pytest.fixture(scope="module")
def report(built: tuple[Path, ...]) -> dict:
    version, traces, fit_items = built
    root = version.parent.parent
    result = CliRunner().invoke(app, [
        "evaluate", "--version", str(version), "--traces", str(traces), "--out", str(root / "out"),
        "--exclude-items-from", str(fit_items), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    rep = json.loads((root / "out" / "report.json").read_text())
    rep["_out"] = root / "out"
    return rep


def test_report_structure(report: dict) -> None:
    assert report["n_items"] == 80 and "minus items listed in" in report["items_source"]
    assert report["cost_source"].startswith("panel config per-token prices")
    assert len(report["curve"]) == 21
    q = report["curve"][0]
    assert {"lambda", "accuracy", "cost", "answered", "calls", "route"} <= set(q)
    assert sum(q["answered"].values()) == pytest.approx(1.0)
    assert set(report["baselines"]) == {*BASELINES, "tuned_on_test", "oracle"}
    assert set(report["apgr"]["methods"]) == {"router", *BASELINES, "tuned_on_test", "oracle"}
    assert report["curve"][-1]["cost"] <= report["curve"][0]["cost"]
    # tuned on these very items, it holds every single model among its options: not below them
    apgr = {k: v["apgr"] for k, v in report["apgr"]["methods"].items()}
    assert apgr["tuned_on_test"] >= apgr["single_models"] - 0.02, apgr
    assert "tuned_on_test" not in report["targets"]["router_vs_baselines"]  # a bar, not a target
    assert report["figures"]  # the loop below must see some
    for name in report["figures"]:
        assert (report["_out"] / name).stat().st_size > 10_000
    assert report["targets"]["match_best_single"]["best_single"] == "qwen2.5-coder-1.5b"


def test_the_oracle_bounds_every_curve_at_matched_cost(report: dict) -> None:
    oracle = report["baselines"]["oracle"]
    oc, oa = upper_hull(oracle["points"])
    curves = [report["curve"], *(report["baselines"][b]["points"]
                                 for b in (*BASELINES, "tuned_on_test"))]
    for q in (q for c in curves for q in c):
        assert q["accuracy"] <= np.interp(q["cost"], oc, oa) + 1e-9
    assert report["oracle_bound"]["ok"]
    assert oracle["accuracy"] >= max(q["accuracy"] for c in curves for q in c)


def test_oracle_by_hand() -> None:
    right = np.array([[True, True], [False, True], [False, False]])
    cost = np.array([[0.1, 1.0], [0.1, 1.0], [0.2, 1.0]])
    got = oracle(right, cost)
    assert (got["accuracy"], got["cost"]) == (pytest.approx(2 / 3), pytest.approx(0.7))
    assert [(q["cost"], q["accuracy"]) for q in got["points"]] == [
        (pytest.approx(0.4 / 3), pytest.approx(1 / 3)), (pytest.approx(1.3 / 3), pytest.approx(2 / 3))]


def test_apgr_by_hand() -> None:
    weak, strong = {"accuracy": 0.5, "cost": 0.1}, {"accuracy": 0.9, "cost": 1.0}
    mixing = [weak, strong]  # the straight line: PGR rises linearly from 0 to 1
    got = apgr(mixing, weak, strong)
    assert got["apgr"] == pytest.approx(0.5, abs=1e-3)
    assert got["cost_50"] == pytest.approx(0.55) and got["cost_80"] == pytest.approx(0.82)
    perfect = apgr([weak, {"accuracy": 0.9, "cost": 0.1}], weak, strong)
    assert perfect["apgr"] == pytest.approx(1.0) and perfect["cost_50"] == pytest.approx(0.1)
    assert apgr([weak], weak, weak)["apgr"] is None


def test_bad_input_is_one_line_and_exit_2(built: tuple[Path, ...], tmp_path: Path) -> None:
    version, traces, _ = built
    (tmp_path / "items.json").write_text('{"not": "a list"}')
    runner = CliRunner()
    cases = {
        "manifest.json does not exist": ["--version", str(tmp_path), "--traces", str(traces)],
        "expected a JSON list of item ids": ["--version", str(version), "--traces", str(traces),
                                             "--items-from", str(tmp_path / "items.json")],
        "no selected item has a trace": ["--version", str(version), "--traces", str(tmp_path)],
    }
    for message, args in cases.items():
        result = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and message in " ".join(result.output.split())


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference traces not generated yet")
def test_evaluate_a_pipeline_version_on_a_slice_of_the_reference_traces(tmp_path: Path) -> None:
    panel = load_panel(PANEL)
    config = TrainConfig(panel=PANEL, traces=[REFERENCE], max_items=100, bootstrap=0,
                         models_dir=tmp_path / "models")
    data = load_dataset(config, panel)
    version = build_version(config, data, panel).version_dir
    held_out = sorted(set(data.table.loc[data.test, "item_id"]))
    (tmp_path / "held_out.json").write_text(json.dumps(held_out))
    result = CliRunner().invoke(app, [
        "evaluate", "--version", str(version), "--traces", str(REFERENCE), "--out",
        str(tmp_path / "o"), "--items-from", str(tmp_path / "held_out.json"), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert 0 < rep["n_items"] <= len(held_out) and rep["oracle_bound"]["ok"]
    assert rep["models"] == panel.names and len(rep["curve"]) == 21


def test_report_is_logged_to_the_versions_mlflow_run(
    report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `confroute evaluate` does with the version's mlflow_run_id (here in a temporary store)."""
    from mlflow import MlflowClient

    from training import tracking
    from training.evaluate import _log

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.start_run(None, "confroute", run_name="train") as run:
        run.log_metrics({"auroc.m": 0.8})
    figures = [report["_out"] / name for name in report["figures"]]
    assert figures
    body = {k: v for k, v in report.items() if k != "_out"}
    said = _log(run.run_id, body, figures)
    assert said.startswith(f"logged to run {run.run_id}"), said
    logged = MlflowClient(tracking_uri=uri).get_run(run.run_id).data.metrics
    router = report["apgr"]["methods"]["router"]
    assert logged["eval.router.apgr"] == pytest.approx(router["apgr"])
    assert logged["eval.fixed_formula.apgr"] == pytest.approx(
        report["apgr"]["methods"]["fixed_formula"]["apgr"])
    assert logged["eval.target.match_best_single"] == float(
        report["targets"]["match_best_single"]["ok"])
    assert logged["auroc.m"] == 0.8  # the training metrics stay
    names = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.run_id,
                                                                           "evaluation")}
    assert names == {"evaluation/report.json", *(f"evaluation/{f.name}" for f in figures)}
    assert _log("0" * 32, body, figures).startswith("not logged: run 0000")
    assert _log(None, body, figures) == "not logged: the version has no mlflow_run_id"
    # the store the manifest names, and never a new empty one where it is missing
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert _log(run.run_id, body, figures, uri).startswith(f"logged to run {run.run_id}")
    other = f"sqlite:///{tmp_path / 'other.db'}"  # $MLFLOW_TRACKING_URI, where set, wins
    with tracking.start_run(other, "confroute", run_name="train") as there:
        pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert _log(there.run_id, body, figures, uri).startswith(f"logged to run {there.run_id}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    gone = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    said = _log(run.run_id, body, figures, gone)
    assert said.startswith("not logged:") and "does not exist" in said
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "mlruns").exists()


def test_item_source_names_paths_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report shipped in the repository (mlruns/, var/) names no one machine's folders."""
    from training.evaluate import select_items
    from training.export import HELDOUT_ITEMS

    version = tmp_path / "project" / "models" / "v1"
    version.mkdir(parents=True)
    (version / HELDOUT_ITEMS).write_text(json.dumps(["a"]))
    table = pd.DataFrame({"item_id": ["a", "b"]})
    monkeypatch.chdir(tmp_path / "project")
    rows, source = select_items(table, version.resolve(), None, None)
    assert list(rows["item_id"]) == ["a"]
    assert source == f"items listed in models/v1/{HELDOUT_ITEMS} (1 of 2)"
    elsewhere = tmp_path / "outside.json"  # not under the working directory: stated as given
    elsewhere.write_text(json.dumps(["b"]))
    _, source = select_items(table, version, None, elsewhere)
    assert source.endswith(f"minus items listed in {elsewhere}")


def test_a_baseline_column_or_a_dataset_column_that_cannot_serve_is_named() -> None:
    """--baseline-column on a column with no finite value, and --leave-one-set-out on a table
    whose 'dataset' column is empty in some rows (a TypeError traceback before): clear errors."""
    from training.config import TrainConfig as Config
    from training.evaluate import column_matrix
    from training.generalisation import leave_one_set_out

    table = pd.DataFrame({"item_id": ["a", "a", "b", "b"], "model": ["m", "n", "m", "n"],
                          "conf": [np.nan] * 4, "dataset": ["x", "x", None, None]})
    with pytest.raises(ValueError, match="'conf': no finite value"):
        column_matrix(table, "conf", ["a", "b"], ["m", "n"])
    with pytest.raises(ValueError, match="'dataset' column is empty in 2 rows"):
        leave_one_set_out(Config(), table, ["m", "n"])
