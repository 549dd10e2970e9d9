"""Datasets by name from the shared data folder; local JSONL/CSV/Parquet with a column mapping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from training.datasets import BUILTIN_DATASETS, DatasetError, Item, data_dir, load_items


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub: a hub name must fail at once, not after minutes of retries; a private cache."""
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.parametrize("spec", BUILTIN_DATASETS)
def test_builtin_sets_load_by_name(spec: str) -> None:
    items = load_items(spec, limit=3)
    name, split = spec.split(":")
    assert [it.item_id for it in items] == [f"{name}/{split}/{i}" for i in range(3)]
    assert all(it.dataset == name and it.grader == "numeric" and it.question for it in items)
    assert all(it.gold.lstrip("-").isdigit() for it in items)  # canonical integers


def test_gold_answers_from_the_raw_files() -> None:
    """gsm8k's '#### 1,234' and svamp's float answers become canonical numbers."""
    assert load_items("gsm8k:test", limit=1)[0] == Item(
        "gsm8k/test/0", "gsm8k", _first("gsm8k/test.jsonl")["question"], "18"
    )
    rows = [json.loads(line) for line in (data_dir() / "gsm8k/train.jsonl").open()]
    i = next(i for i, r in enumerate(rows) if "," in r["answer"].split("####")[-1])
    raw = rows[i]["answer"].split("####")[-1].strip()
    item = load_items("gsm8k:train", limit=i + 1)[i]
    assert item.gold == raw.replace(",", "") and "," not in item.gold
    svamp = load_items("svamp:test", limit=1)[0]
    first = _first("svamp/test.jsonl")
    assert first["Answer"] == 145.0 and svamp.gold == "145"
    assert svamp.question == f"{first['Body'].strip()} {first['Question'].strip()}"
    multi = load_items("multiarith:test", limit=1)[0]
    assert (multi.question, multi.gold) == (_first("multiarith/test.jsonl")["input"], "39")


def _first(rel: str) -> dict:  # type: ignore[type-arg]
    with (data_dir() / rel).open() as fh:
        return dict(json.loads(fh.readline()))


def test_limit_beyond_size_and_no_limit() -> None:
    with (data_dir() / "multiarith/test.jsonl").open() as fh:
        rows = sum(1 for line in fh if line.strip())  # 600: the last line has no newline
    assert len(load_items("multiarith:test")) == rows
    assert len(load_items("multiarith:test", limit=10_000)) == rows


def test_missing_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONFROUTE_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="CONFROUTE_DATA_DIR"):
        load_items("gsm8k:test")


def test_data_folder_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "multiarith").mkdir()
    (tmp_path / "multiarith" / "test.jsonl").write_text('{"input": "1+1?", "target": 2}\n')
    monkeypatch.setenv("CONFROUTE_DATA_DIR", str(tmp_path))
    assert load_items("multiarith:test") == [Item("multiarith/test/0", "multiarith", "1+1?", "2")]


ROWS = [
    {"q": "What is 2+2?", "a": "#### 4", "extra": 1},
    {"q": "Half of 5?", "a": "2.5", "extra": 2},
    {"q": "Thousands?", "a": "1,234", "extra": 3},
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_files_with_column_mapping(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"mine.{fmt}"
    df = pd.DataFrame(ROWS)
    if fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    items = load_items(str(path), question="q", answer="a", limit=2)
    assert items == [
        Item("mine/all/0", "mine", "What is 2+2?", "4"),
        Item("mine/all/1", "mine", "Half of 5?", "2.5"),
    ]
    assert load_items(str(path), question="q", answer="a")[2].gold == "1234"


def test_local_file_with_exact_grader_keeps_text(tmp_path: Path) -> None:
    path = tmp_path / "cap.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    item = load_items(str(path), grader="exact")[0]
    assert (item.gold, item.grader) == ("Paris", "exact")


def test_non_numeric_gold_with_numeric_grader(tmp_path: Path) -> None:
    path = tmp_path / "cap.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    with pytest.raises(DatasetError, match=r"'Paris' is not a number.*exact"):
        load_items(str(path))


def test_missing_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    columns = re.escape("no column 'question'; columns are ['q', 'a', 'extra']")
    with pytest.raises(DatasetError, match=columns):
        load_items(str(path))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_items(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    with pytest.raises(DatasetError, match=r"cannot read .*bad\.jsonl as json"):
        load_items(str(bad))


@pytest.mark.timeout(30)
def test_unknown_hub_name_fails_fast_and_clearly() -> None:
    msg = r"cannot load dataset 'nobody/nothing:test'.*Built in: gsm8k"
    with pytest.raises(DatasetError, match=msg):
        load_items("nobody/nothing:test")


def test_unknown_builtin_split_does_not_ask_the_hub() -> None:
    with pytest.raises(DatasetError, match=r"unknown split 'gsm8k:dev'.*gsm8k:train, gsm8k:test"):
        load_items("gsm8k:dev")
