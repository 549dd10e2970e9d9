"""`confroute report traces` on real reference traces (a few per model)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner, Result

from confroute.cli import app
from confroute.modelstore import REFERENCE_MODELS
from confroute.traces import read_traces
from training.report import HIST_SIGNALS, coverage, dataset_label, summarize, trace_stats

ROOT = Path(__file__).resolve().parents[2]
# Real trace lines, verbatim, gzipped like the shipped sets: 4 MultiArith items x 3 models (smollm2 and
# 0.5b from var/traces; 1.5b from training.generate with configs/panel.cpu.yaml on the same items), plus
# one truncated smollm2 trace that no other model answered (a coverage gap).
FIXTURE = Path(__file__).parent / "fixtures" / "sample_traces.jsonl.gz"
PANEL = ROOT / "configs" / "panel.cpu.yaml"


def fixture_lines() -> list[str]:
    with gzip.open(FIXTURE, "rt") as fh:
        return [line for line in fh if line.strip()]


@pytest.fixture(scope="module")
def raw() -> list[dict[str, Any]]:
    """The fixture's traces as plain JSON, for counting independently of the code under test."""
    return [json.loads(line) for line in fixture_lines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """One report over a directory: the fixture, and a plain file repeating one of its traces."""
    d = tmp_path_factory.mktemp("report")
    traces = d / "traces"
    traces.mkdir()
    shutil.copy(FIXTURE, traces / FIXTURE.name)
    (traces / "repeat.jsonl").write_text(fixture_lines()[0])
    args = ["report", "traces", str(traces), "--figures", str(d / "fig"), "--json",
            str(d / "table.json"), "--card", str(d / "card.md"), "--panel", str(PANEL),
            "--wall-time", "smollm2-135m=123"]
    return CliRunner().invoke(app, args), d


def expected_rows(raw: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Counts per (model, dataset:split) and (model, "all"), straight from the JSON."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"items": 0, "correct": 0, "completion_tokens": 0, "truncated": 0, "latency_s": 0.0}
    )
    for t in raw:
        name, split, _ = t["item_id"].split("/")  # the fixture's ids are the loader's name/split/row
        assert name == t["dataset"]
        for key in ((t["model"], f"{name}:{split}"), (t["model"], "all")):
            row = out[key]
            row["items"] += 1
            row["correct"] += bool(t["correct"])
            row["completion_tokens"] += t["usage"]["completion_tokens"]
            row["truncated"] += t.get("finish_reason", "stop") == "length"  # omitted when default
            row["latency_s"] += t["latency_s"]
    return out


def test_fixture_is_small_and_varied(raw: list[dict[str, Any]]) -> None:
    assert FIXTURE.stat().st_size < 200_000
    assert {t["model"] for t in raw} == set(REFERENCE_MODELS)
    assert {t["correct"] for t in raw} == {True, False}
    assert any(t.get("finish_reason") == "length" for t in raw)


def test_table_matches_independent_counts(run: tuple[Result, Path], raw: list[dict]) -> None:
    result, d = run
    assert result.exit_code == 0, result.output
    table = json.loads((d / "table.json").read_text())
    got = {(r["model"], r["dataset"]): r for r in table["rows"]}
    expected = expected_rows(raw)
    assert got.keys() == expected.keys()
    for key, exp in expected.items():
        row = got[key]
        assert {k: row[k] for k in exp} == pytest.approx(exp), key
        assert row["accuracy"] == pytest.approx(exp["correct"] / exp["items"], abs=1e-4)
        tokens_per_s = exp["completion_tokens"] / exp["latency_s"]
        assert row["tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-3)
    answered = defaultdict(set)
    for t in raw:
        answered[t["model"]].add(t["item_id"])
    items = set().union(*answered.values())
    missing = sorted([m, i] for m, done in answered.items() for i in items - done)
    assert table["duplicates"] == 1 and table["missing"] == missing != []
    for model in REFERENCE_MODELS:
        assert model in result.stdout


def test_four_png_figures_per_model(run: tuple[Result, Path]) -> None:
    import matplotlib.image

    _, d = run
    files = sorted((d / "fig").iterdir())
    assert [f.name for f in files] == sorted(
        f"{m}-{name}.png" for m in REFERENCE_MODELS for name, _ in HIST_SIGNALS
    )
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(f).shape[0] > 200


def test_card_states_models_prompt_and_accuracy(run: tuple[Result, Path], raw: list[dict]) -> None:
    _, d = run
    card = (d / "card.md").read_text()
    for src in REFERENCE_MODELS.values():
        assert src.sha256 in card
    assert "The answer is: N" in card and "llama-cpp-python" in card and "| 123 |" in card
    for (model, dataset), exp in expected_rows(raw).items():
        cell = f"{exp['correct'] / exp['items']:.3f} ({exp['correct']}/{exp['items']})"
        assert cell in card, (model, dataset)


def test_coverage_names_missing_pairs() -> None:
    traces = read_traces(FIXTURE)
    only_smollm2 = {t.item_id for t in traces} - {t.item_id for t in traces if t.model != "smollm2-135m"}
    assert len(only_smollm2) == 1
    item = only_smollm2.pop()
    models = list(REFERENCE_MODELS)
    assert coverage(traces, models) == [(m, item) for m in sorted(models[1:])]
    assert coverage([t for t in traces if t.item_id != item], models) == []


@pytest.mark.parametrize(("name", "says"), [("missing.jsonl", "no such"), ("empty", "no *.jsonl")])
def test_bad_path_is_one_message_and_exit_2(tmp_path: Path, name: str, says: str) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", "traces", str(tmp_path / name), "--no-figures"])
    assert result.exit_code == 2 and result.stdout == ""
    message = " ".join(result.stderr.split())  # rich wraps long lines at the console width
    assert message.startswith(f"error: {tmp_path / name}: {says}")


def test_train_and_test_splits_of_one_dataset_get_their_own_rows() -> None:
    base = read_traces(FIXTURE)[0]
    test = msgspec.structs.replace(base, item_id="gsm8k/test/3", dataset="gsm8k", correct=True)
    train = msgspec.structs.replace(base, item_id="gsm8k/train/3", dataset="gsm8k", correct=False)
    own = msgspec.structs.replace(base, item_id="my-q-17", dataset="mine")
    odd = msgspec.structs.replace(base, item_id="other/test/3", dataset="gsm8k")  # id not the loader's
    labels = [dataset_label(t) for t in (test, train, own, odd)]
    assert labels == ["gsm8k:test", "gsm8k:train", "mine", "gsm8k"]
    summary = summarize([trace_stats(t) for t in (test, train)])
    assert {(r.dataset, r.items, r.correct) for r in summary.rows} == {
        ("gsm8k:test", 1, 1), ("gsm8k:train", 1, 0), ("all", 2, 1)}
