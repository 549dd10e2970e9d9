"""Retrain's parts on a real SQLite decision log: rows and counts, --since, the gate, no labels."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from confroute.cli import app as cli
from confroute.decisions.records import DecisionRecord, FeedbackRecord, Record
from confroute.decisions.store import open_store
from confroute.features import FEATURE_NAMES
from confroute.panel import load_panel
from confroute.traces import read_traces
from training.gate import Comparison, Gate, judge
from training.inrows import (
    LogError,
    label_counts,
    log_rows,
    parse_since,
    read_log,
    redact,
    since_version,
)
from training.retrain import bias_warnings
from training.table import build_table

ROOT = Path(__file__).resolve().parents[2]
PANEL = ROOT / "configs/panel.cpu.yaml"
TRACES = Path(__file__).parent / "fixtures/sample_traces.jsonl.gz"


def _records(t0: float, version: str = "v1", decision: str = "accept") -> list[DecisionRecord]:
    """One decision per real fixture trace (its real signals), request id = item id."""
    table = build_table(read_traces(TRACES), load_panel(PANEL))
    out = []
    for i, row in table.iterrows():
        signals = {n: None if math.isnan(v) else float(v)
                   for n, v in zip(FEATURE_NAMES, row[list(FEATURE_NAMES)], strict=True)}
        out.append(DecisionRecord(
            f"{version}-{i}", str(row["item_id"]), int(row["stage"]), str(row["model"]), signals,
            0.5, 0.5, decision, "confident", 0.5, version, 0.001, t0 + int(i), row["prediction"]))
    return out


def _log(path: Path, records: list[Record]) -> str:
    store = open_store(str(path))
    store.write(records)
    store.close()
    return str(path)


def _config(tmp: Path) -> Path:
    path = tmp / "retrain.yaml"
    body = {"train": {"panel": str(PANEL), "tracking": {"uri": f"sqlite:///{tmp}/mlruns/db"}}}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_parse_since() -> None:
    assert parse_since(None) is None
    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86_400
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-11-23T04:00") == parse_since("2026-11-23T04:00+00:00")
    with pytest.raises(LogError, match="ISO time"):
        parse_since("yesterday")


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("var/decisions.db") == "var/decisions.db"


def test_rows_one_per_request_and_model_labels_counted_not_guessed(tmp_path: Path) -> None:
    first = _records(1000.0)
    again = [DecisionRecord(**{**_as_dict(r), "record_id": r.record_id + "b", "decision": "escalate",
                               "created": r.created + 500}) for r in first[:2]]
    failed = DecisionRecord(**{**_as_dict(first[3]), "record_id": "err", "decision": "error"})
    explored = DecisionRecord(**{**_as_dict(first[4]), "record_id": "ex", "decision": "explore",
                                 "created": first[4].created + 500})
    labels = [FeedbackRecord(r.request_id, r.stage, True, 2000.0) for r in first[:5]]
    url = _log(tmp_path / "log.db", [*first, *again, failed, explored, *labels])
    rows = log_rows(read_log(url), load_panel(PANEL))
    assert len(rows) == len(first)  # the repeat replaces, the error is left out
    assert (rows.set_index(["item_id", "model"]).loc[
        (first[0].request_id, first[0].model), "decision"] == "escalate")
    counts = label_counts(rows, load_panel(PANEL).names)
    assert counts["labeled"].sum() == 5 and counts["unlabeled"].sum() == len(first) - 5
    assert counts["labeled_escalate"].sum() == 2 and counts["labeled_accept"].sum() == 2
    assert counts["labeled_explore"].sum() == 1
    assert rows.loc[~rows["labeled"], "correct"].isna().all()  # never guessed


def _as_dict(r: DecisionRecord) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__struct_fields__}


def test_labels_only_on_accepted_answers_are_warned_about(tmp_path: Path) -> None:
    panel = load_panel(PANEL)
    accepted = _records(1000.0)
    escalated = [DecisionRecord(**{**_as_dict(r), "request_id": f"x{r.request_id}"})
                 for r in _records(1000.0, "v2", "escalate")]
    labels = [FeedbackRecord(r.request_id, r.stage, True, 2000.0) for r in accepted]
    gold = [FeedbackRecord(r.request_id, r.stage, False, 2000.0) for r in escalated]

    def warnings(name: str, *records: Record) -> list[str]:
        rows = log_rows(read_log(_log(tmp_path / name, list(records))), panel)
        return bias_warnings(label_counts(rows, panel.names))

    assert warnings("accepted.db", *accepted, *labels) == []
    biased = warnings("biased.db", *accepted, *labels, *escalated)
    assert len(biased) == 3 and all("selection bias" in w for w in biased)
    assert warnings("graded.db", *accepted, *labels, *escalated, *gold) == []


def test_since_and_since_version_select_the_newer_decisions(tmp_path: Path) -> None:
    t0 = time.time() - 3600
    url = _log(tmp_path / "log.db", [*_records(t0, "v1"), *_records(t0 + 1800, "v2")])
    n = len(_records(0.0))
    assert since_version(url, "v2") == t0 + 1800
    assert len(read_log(url, since_version(url, "v2"))) == n
    assert len(read_log(url, parse_since("45m"))) == n
    with pytest.raises(LogError, match="no logged decision"):
        since_version(url, "v9")


def test_a_log_without_labels_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    url = _log(tmp_path / "log.db", list(_records(1000.0)))
    models = tmp_path / "models"
    models.mkdir()
    args = ["retrain", "--log", url, "--config", str(_config(tmp_path)), "--models-dir", str(models)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "160"})
    assert result.exit_code == 3, result.output
    assert "no labeled decisions" in result.output and "no version written" in result.output
    assert "smollm2-135m" in result.output  # the per-model counts are printed
    assert list(models.iterdir()) == []
    assert not (tmp_path / "mlruns").exists()


def test_too_few_labels_for_a_model_exits_3(tmp_path: Path) -> None:
    recs = _records(1000.0)
    labels = [FeedbackRecord(r.request_id, r.stage, True, 2000.0) for r in recs]
    url = _log(tmp_path / "log.db", [*recs, *labels])
    (tmp_path / "models").mkdir()  # empty: a first version would start here
    args = ["retrain", "--log", url, "--config", str(_config(tmp_path)), "--models-dir",
            str(tmp_path / "models")]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "160"})
    assert result.exit_code == 3, result.output
    assert "too few labeled rows" in result.output and "min_labeled_rows=50" in result.output


def test_a_missing_log_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["retrain", "--log", str(tmp_path / "none.db"),
                                      "--config", str(_config(tmp_path))])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "none.db").exists()


def _comparison(cur: dict[str, float] | None, cand: dict[str, float],
                utility: tuple[float, float] | None = None) -> Comparison:
    util = {} if utility is None else {
        "current": {"utility": utility[0], "n_items": 60}, "candidate": {"utility": utility[1],
                                                                         "n_items": 60}}
    return Comparison({"current": "v1" if cur is not None else None, "candidate": "v2"},
                      {"current": {"m": cur}, "candidate": {"m": cand}}, util, "test", 0.5)


def _m(n: int, auroc: float, ece: float, brier: float, n_correct: int | None = None
       ) -> dict[str, float]:
    n_correct = n // 2 if n_correct is None else n_correct
    return {"n": n, "n_correct": n_correct, "auroc": auroc, "ece": ece, "brier": brier,
            "log_loss": 0.5}


def test_gate_margins() -> None:
    gate = Gate(max_auroc_drop=0.01, max_ece_increase=0.01, max_brier_increase=0.005)
    assert judge(_comparison(_m(200, 0.80, 0.05, 0.20), _m(200, 0.795, 0.055, 0.204)), gate).promote
    worse = judge(_comparison(_m(200, 0.80, 0.05, 0.20), _m(200, 0.78, 0.05, 0.20)), gate)
    assert not worse.promote and worse.reasons[0].startswith("m auroc: candidate 0.7800")
    ece = _comparison(_m(50, 0.8, 0.05, 0.2), _m(50, 0.8, 0.30, 0.2))
    assert judge(ece, gate).promote  # ECE on 50 rows is not gated (min_ece_rows=100)
    assert not judge(ece, gate.model_copy(update={"min_ece_rows": 50})).promote
    rare = judge(_comparison(_m(200, 0.8, 0.05, 0.2, 195), _m(200, 0.1, 0.05, 0.2, 195)), gate)
    assert rare.promote and "AUROC not gated (5 rows of the rarer class" in rare.not_judged[0]
    util = _comparison(_m(200, 0.8, 0.05, 0.2), _m(200, 0.8, 0.05, 0.2), utility=(0.30, 0.25))
    assert [k.metric for k in judge(util, gate).checks if not k.ok] == ["utility"]
    few = judge(util, gate.model_copy(update={"min_utility_items": 100}))
    assert few.promote and "utility not gated (60 full cascades" in few.not_judged[-1]


def test_gate_without_current_or_without_enough_rows() -> None:
    assert judge(_comparison(None, _m(200, 0.5, 0.5, 0.5)), Gate()).promote
    few = judge(_comparison(_m(5, 0.8, 0.05, 0.2), _m(5, 0.9, 0.01, 0.1)), Gate())
    assert not few.promote and "nothing to judge" in few.reasons[0]
    assert "5 held-out rows" in few.not_judged[0]


def test_a_stage_logged_after_gold_feedback_is_graded_with_that_gold(tmp_path: Path) -> None:
    """Exploration runs in the background: its stage may land after the request's gold answer."""
    from confroute.grading import get_grader

    recs = _records(1000.0)
    first = next(r for r in recs if r.stage == 0)
    second = next(r for r in recs if r.stage == 1)
    late = DecisionRecord(**{**_as_dict(second), "request_id": first.request_id,
                             "decision": "explore", "prediction": "42"})
    gold = FeedbackRecord(first.request_id, 0, False, 2000.0, gold="42")
    url = _log(tmp_path / "log.db", [first, gold, late])
    panel = load_panel(PANEL)
    assert log_rows(read_log(url), panel)["labeled"].sum() == 1  # no grader: stays unlabeled
    graded = log_rows(read_log(url), panel, get_grader("numeric")).set_index("model")["correct"]
    assert graded.to_dict() == {first.model: False, second.model: True}


def test_replay_utility_follows_the_policy() -> None:
    import numpy as np

    from confroute.policy import PolicyRow, ThresholdPolicy
    from training.gate import replay_utility

    policy = ThresholdPolicy(("a", "b"), (PolicyRow(0.5, ("a", "b"), {"a": 0.5}, 0.0, 0.0),))
    p = np.array([[0.9, np.nan], [0.2, np.nan], [np.nan, np.nan]])  # accept, escalate, escalate
    correct = np.array([[True, True], [True, False], [False, True]])
    cost = np.array([[1.0, 3.0]] * 3)
    got = replay_utility(policy, ["a", "b"], p, correct, cost, 0.5)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["cost"] == pytest.approx((1 + 4 + 4) / 3 / 3)
    assert got["utility"] == pytest.approx(0.5 * 2 / 3 - 0.5 * 1.0)


def test_a_log_from_a_build_with_one_signal_fewer_trains_this_build(tmp_path: Path) -> None:
    """Signals are logged by name: rows written by a build without `agree_prev` (and with a
    signal this build dropped) read back with agree_prev NaN, and this build's classifiers fit
    on them, every FEATURE_NAMES column present."""
    from training.config import TrainConfig
    from training.train import Dataset, fit_panel

    panel = load_panel(PANEL)
    table = build_table(read_traces(ROOT / "data/reference-traces/multiarith_test.traces.npz"),
                        panel)
    records: list[Record] = []
    for i, row in table.iterrows():
        old = {n: None if math.isnan(v) else float(v)
               for n, v in zip(FEATURE_NAMES, row[list(FEATURE_NAMES)], strict=True)
               if n != "agree_prev"}
        old["retired_signal"] = 1.0
        rid = str(row["item_id"])
        records.append(DecisionRecord(f"old-{i}", rid, int(row["stage"]), str(row["model"]), old,
                                      0.5, 0.5, "escalate", "not_confident", 0.5, "v-old", 0.001,
                                      1000.0 + int(i), row["prediction"]))
        records.append(FeedbackRecord(rid, int(row["stage"]), bool(row["correct"]), 2000.0))
    rows = log_rows(read_log(_log(tmp_path / "log.db", records)), panel)
    assert len(rows) == len(table) and "retired_signal" not in rows
    assert rows["agree_prev"].isna().all() and rows["avg_logprob"].notna().all()
    test = (rows["item_id"].rank(method="dense") % 5 == 0).to_numpy()
    fitted = fit_panel(TrainConfig(classifier="logistic"), Dataset(rows, list(FEATURE_NAMES), test),
                       panel.names)
    for model, clf in fitted.items():
        x = rows.loc[test & (rows["model"] == model).to_numpy(), list(FEATURE_NAMES)]
        p = clf.predict_proba(x.to_numpy(float))[:, 1]
        assert len(p) and ((p >= 0) & (p <= 1)).all()


def test_an_unnamed_log_of_todays_width_reads_by_todays_names(tmp_path: Path) -> None:
    """Logs written before signals were named hold a bare array: same width, today's names."""
    import json
    import sqlite3

    url = _log(tmp_path / "log.db", _records(1000.0)[:2])
    with sqlite3.connect(url) as conn:
        conn.execute("UPDATE decisions SET signals = ?", (json.dumps([0.25] * len(FEATURE_NAMES)),))
    rows = read_log(url)
    assert all(r.signals == dict.fromkeys(FEATURE_NAMES, 0.25) for r in rows)
    with sqlite3.connect(url) as conn:
        conn.execute("UPDATE decisions SET signals = ?", (json.dumps([0.25, 0.5]),))
    with pytest.raises(LogError, match="share no signal name"):
        log_rows(read_log(url), load_panel(PANEL))
