"""Feature table from real traces of several panel models: stages, cross-stage agreement, cost."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from confroute.features import FEATURE_NAMES, extract_signals
from confroute.grading import get_grader
from confroute.panel import Panel, load_panel
from confroute.traces import Trace, read_traces
from training.table import GROUP_COLUMN, META_COLUMNS, QUERY_COLUMNS, build_table, complete_items

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "confroute" / "fixtures" / "traces_sample.jsonl"


@pytest.fixture(scope="module")
def panel() -> Panel:
    return load_panel(ROOT / "configs" / "panel.cpu.yaml")


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    """Real SmolLM2 and Qwen2.5-Coder traces; one item answered by SmolLM2 only."""
    return read_traces(SAMPLE)


@pytest.fixture(scope="module")
def table(traces: list[Trace], panel: Panel) -> pd.DataFrame:
    return build_table(traces, panel)


def test_columns_and_rows(table: pd.DataFrame, traces: list[Trace]) -> None:
    assert list(table.columns) == [*META_COLUMNS, *FEATURE_NAMES, *QUERY_COLUMNS, GROUP_COLUMN]
    assert len(table) == len(traces)
    assert set(zip(table["item_id"], table["model"], strict=True)) == {
        (t.item_id, t.model) for t in traces
    }


def test_stages_follow_panel_order(table: pd.DataFrame, panel: Panel) -> None:
    for model, stage in zip(table["model"], table["stage"], strict=True):
        assert panel.names[stage] == model


def test_agree_prev_nan_for_stage_0_and_computed_later(
    table: pd.DataFrame, traces: list[Trace]
) -> None:
    first = table[table["stage"] == 0]
    assert first["agree_prev"].isna().all()
    later = table[table["stage"] > 0]
    assert len(later) > 0
    g = get_grader("numeric")
    by_key = {(t.item_id, t.model): t for t in traces}
    for _, row in later.iterrows():
        cheaper = by_key[(row["item_id"], "smollm2-135m")]
        own = by_key[(row["item_id"], row["model"])]
        ext_own, ext_cheap = g.extract(own.response), g.extract(cheaper.response)
        assert ext_own is not None and ext_cheap is not None
        assert row["agree_prev"] == float(g.is_correct(ext_own.value, ext_cheap.value))


def test_cost_from_panel_config(table: pd.DataFrame, traces: list[Trace]) -> None:
    """configs/panel.cpu.yaml: per 1k prompt/completion tokens SmolLM2 1/20, Qwen-0.5B 2.5/50."""
    rates = {"smollm2-135m": (1.0, 20.0), "qwen2.5-coder-0.5b": (2.5, 50.0)}
    for _, row in table.iterrows():
        prompt, completion = rates[row["model"]]
        expected = (prompt * row["prompt_tokens"] + completion * row["completion_tokens"]) / 1000
        assert row["cost"] == pytest.approx(expected)
        assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0


def test_labels_and_features_match_the_traces(
    table: pd.DataFrame, traces: list[Trace]
) -> None:
    for t in traces:
        row = table[(table["item_id"] == t.item_id) & (table["model"] == t.model)].iloc[0]
        ext = get_grader("numeric").extract(t.response)
        assert row["prediction"] == (ext.value if ext else None)
        assert row["correct"] == get_grader("numeric").is_correct(row["prediction"], t.gold or "")
        if row["stage"] == 0:
            np.testing.assert_array_equal(row[list(FEATURE_NAMES)].to_numpy(float),
                                          extract_signals(t))


def test_stale_grading_is_redone(traces: list[Trace], panel: Panel) -> None:
    """A trace graded by an older extractor gets the current verdict when it has a gold answer."""
    t = traces[0]
    ext = get_grader("numeric").extract(t.response)
    assert ext is not None
    stale = msgspec.structs.replace(t, prediction="999999", correct=not t.correct)
    row = build_table([stale], panel).iloc[0]
    assert (row["prediction"], row["correct"]) == (ext.value, t.correct)


def test_label_without_gold_is_kept(traces: list[Trace], panel: Panel) -> None:
    """Feedback labels come without a gold answer: the trace's own `correct` stands."""
    t = msgspec.structs.replace(traces[0], gold=None, correct=True, prediction="7")
    row = build_table([t], panel).iloc[0]
    assert (row["correct"], row["prediction"]) == (True, "7")


def test_missing_middle_model_is_left_out_of_agreement(
    traces: list[Trace], panel: Panel
) -> None:
    """Stage 2 with stage 1 missing: agreement is over the models that did answer."""
    item = next(t.item_id for t in traces if t.model == "qwen2.5-coder-0.5b")
    small = next(t for t in traces if t.item_id == item and t.model == "smollm2-135m")
    ext = get_grader("numeric").extract(small.response)
    assert ext is not None
    big = msgspec.structs.replace(
        small, model="qwen2.5-coder-1.5b", response=f"The answer is: {ext.value}", tokens=[]
    )
    table = build_table([small, big], panel)
    assert table["stage"].tolist() == [0, 2]
    assert table["agree_prev"].iloc[1] == 1.0  # not 0.5: the missing model is no disagreement


def test_models_outside_the_panel_are_ignored(traces: list[Trace], panel: Panel) -> None:
    other = msgspec.structs.replace(traces[0], model="gpt-4o")
    assert len(build_table([other], panel)) == 0


def test_empty_input_has_all_columns(panel: Panel) -> None:
    empty = build_table([], panel)
    columns = [*META_COLUMNS, *FEATURE_NAMES, *QUERY_COLUMNS, GROUP_COLUMN]
    assert list(empty.columns) == columns and len(empty) == 0


def test_complete_items(table: pd.DataFrame) -> None:
    both = complete_items(table, ["smollm2-135m", "qwen2.5-coder-0.5b"])
    per_item = both.groupby("item_id")["model"].nunique()
    assert (per_item == 2).all()
    assert set(both["item_id"]) < set(table["item_id"])  # the SmolLM2-only item is dropped
    # items are filtered, not models: every row of an item the given models all answered stays
    qwen_items = set(table.loc[table["model"] == "qwen2.5-coder-0.5b", "item_id"])
    kept = complete_items(table, ["qwen2.5-coder-0.5b"])
    assert len(kept) == int(table["item_id"].isin(qwen_items).sum())
