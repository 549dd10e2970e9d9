"""Drift report: PSI/KS flag a shifted signal and leave an unchanged one alone, on a real log too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from confroute.cli import app as cli
from confroute.commands.retrain import drift_table
from confroute.decisions.records import DecisionRecord, FeedbackRecord, Record
from confroute.decisions.store import open_store
from confroute.features import FEATURE_NAMES
from confroute.panel import load_panel
from confroute.traces import read_traces
from training.drift import calibration, drift_report, psi
from training.table import build_table


def _frame(model: str, n: int, shift: float, rng: np.random.Generator) -> pd.DataFrame:
    data = {name: rng.normal(0, 1, n) for name in FEATURE_NAMES}
    data["avg_logprob"] = rng.normal(-0.5 + shift, 0.2, n)
    data["p_correct"] = rng.uniform(0, 1, n)
    return pd.DataFrame({"model": model, **data})


def test_psi_is_zero_for_same_distribution_and_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(ref, rng.normal(1.5, 1, 5000)) > 0.5


def test_psi_constant_reference_and_empty() -> None:
    assert psi(np.ones(10), np.ones(5)) == 0.0
    assert psi(np.ones(10), np.zeros(5)) == float("inf")
    assert np.isnan(psi(np.array([]), np.ones(3)))


def test_drift_report_flags_only_the_moved_signal() -> None:
    rng = np.random.default_rng(1)
    reference = _frame("m", 2000, 0.0, rng)
    recent = _frame("m", 400, -0.6, rng)
    report = drift_report(reference, recent)["models"]["m"]
    assert report["flagged"] == ["avg_logprob"]
    row = next(r for r in report["signals"] if r["signal"] == "avg_logprob")
    assert row["recent_mean"] == pytest.approx(-1.1, abs=0.05)


def test_too_few_recent_rows_are_not_flagged() -> None:
    rng = np.random.default_rng(2)
    report = drift_report(_frame("m", 500, 0, rng), _frame("m", 10, -2.0, rng))
    assert report["models"]["m"]["flagged"] == [] and report["models"]["m"]["judged"] is False
    console = Console(record=True, width=200)
    console.print(drift_table({**report, "reference": "r"}))
    assert "not judged (< 30 rows a side)" in console.export_text()


def test_calibration_of_a_calibrated_and_a_miscalibrated_predictor() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    assert calibration(p, y)["ece"] < 0.02 and not calibration(p, y)["flagged"]
    off = calibration(np.full_like(p, 0.9), y)
    assert off["ece"] == pytest.approx(0.4, abs=0.02) and off["flagged"]
    assert calibration(p, np.full_like(p, np.nan))["n_labeled"] == 0
    few = calibration(p[:40], y[:40])  # ECE on 40 rows is far above 0 even when p is exact
    assert few["ece"] > 0.05 and not few["flagged"]


# -- on a real decision log -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES", ROOT / "data/reference-traces"))
SHIFT = -1.0  # the recent traffic's avg_logprob, moved: the models are less sure of it


def _real_table() -> pd.DataFrame:
    """Real signals of the first panel model with 60+ answers (finished traces, else var/traces)."""
    panel = load_panel(ROOT / "configs/panel.cpu.yaml")
    for source in (REFERENCE, ROOT / "var/traces"):
        traces = read_traces(source) if source.exists() else []
        table = build_table(traces, panel) if traces else pd.DataFrame({"model": []})
        counts = table["model"].value_counts()
        if (counts >= 60).any():
            return table[table["model"] == counts.index[0]].reset_index(drop=True)
    pytest.skip("no reference traces with 60+ answers of one model")


def _write_log(path: Path, rows: pd.DataFrame, shift: float) -> str:
    """The rows as logged decisions (avg_logprob moved by `shift`), every other one labeled."""
    col = list(FEATURE_NAMES).index("avg_logprob")
    records: list[Record] = []
    for i, r in enumerate(rows.itertuples()):
        x = [None if np.isnan(v) else float(v) for v in rows.loc[r.Index, list(FEATURE_NAMES)]]
        x[col] = None if x[col] is None else x[col] + shift
        named = dict(zip(FEATURE_NAMES, x, strict=True))
        records.append(DecisionRecord(f"r{i}", f"q{i}", 0, r.model, named, 0.5, 0.5, "accept",
                                      "confident", 0.5, "v1", 0.001, 1000.0 + i,
                                      r.prediction if isinstance(r.prediction, str) else None))
        if i % 2 == 0:
            records.append(FeedbackRecord(f"q{i}", 0, bool(r.correct), 2000.0))
    store = open_store(str(path))
    store.write(records)
    store.close()
    return str(path)


def test_drift_command_flags_a_shifted_signal_in_the_decision_log(tmp_path: Path) -> None:
    table = _real_table()
    items = np.sort(table["item_id"].unique())
    ref, recent = table[table["item_id"].isin(items[::2])], table[table["item_id"].isin(items[1::2])]
    ref.to_csv(tmp_path / "reference.csv", index=False)
    panel = tmp_path / "panel.yaml"
    panel.write_text(yaml.safe_dump({"name": "p", "models": [{"name": table["model"][0]}]}))
    reports = {}
    (tmp_path / "none").mkdir()  # no current version in it: signals only
    for name, shift in (("moved", SHIFT), ("same", 0.0)):
        log = _write_log(tmp_path / f"{name}.db", recent, shift)
        out = tmp_path / f"{name}.json"
        args = ["drift", "--log", log, "--reference", str(tmp_path / "reference.csv"),
                "--out", str(out), "--models-dir", str(tmp_path / "none"), "--panel", str(panel)]
        result = CliRunner().invoke(cli, args, env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        assert "p_correct is not compared" in result.output
        reports[name] = json.loads(out.read_text())["models"][table["model"][0]]
    moved = next(r for r in reports["moved"]["signals"] if r["signal"] == "avg_logprob")
    assert "avg_logprob" in reports["moved"]["flagged"] and moved["psi"] > 1.0
    assert reports["moved"]["judged"] is True
    assert moved["recent_mean"] == pytest.approx(recent["avg_logprob"].mean() + SHIFT)
    assert "avg_logprob" not in reports["same"]["flagged"]
    assert reports["same"]["n_recent"] == len(recent)
