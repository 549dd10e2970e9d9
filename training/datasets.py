"""Benchmark items by name (`gsm8k:test`), or any local JSONL/CSV/Parquet with a column mapping.

Built-in sets are read from CONFROUTE_DATA_DIR (default ../shared/data beside the project root)
through the `datasets` library; a name that is neither built in nor a local file is tried on the
hub for users who have hub access (`owner/name:split`, with --question/--answer columns).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confroute.grading import DEFAULT_GRADER, format_number, parse_number


@dataclass(frozen=True)
class Item:
    """One question with its gold answer."""

    item_id: str  # "<dataset>/<split>/<row>": stable across models, so a question can be followed
    dataset: str
    question: str
    gold: str
    grader: str = DEFAULT_GRADER


def _gsm8k_gold(row: dict[str, Any]) -> str:
    return _number(row["answer"].split("####")[-1])


def _number(value: Any) -> str:
    parsed = parse_number(str(value))
    return format_number(parsed) if parsed is not None else str(value).strip()


# name -> (file relative to the data dir, question getter, gold getter)
_Getter = Callable[[dict[str, Any]], str]
_BUILTIN: dict[str, tuple[str, _Getter, _Getter]] = {
    "gsm8k:train": ("gsm8k/train.jsonl", lambda r: r["question"], _gsm8k_gold),
    "gsm8k:test": ("gsm8k/test.jsonl", lambda r: r["question"], _gsm8k_gold),
    "svamp:test": (
        "svamp/test.jsonl",
        lambda r: f"{r['Body'].strip()} {r['Question'].strip()}",
        lambda r: _number(r["Answer"]),
    ),
    "multiarith:test": (
        "multiarith/test.jsonl",
        lambda r: r["input"],
        lambda r: _number(r["target"]),
    ),
    # MAWPS one-operation and addition/subtraction problems: the easy side of the mixed workload
    "singleop:test": ("mawps/singleop.jsonl", lambda r: r["input"], lambda r: _number(r["target"])),
    "addsub:test": ("mawps/addsub.jsonl", lambda r: r["input"], lambda r: _number(r["target"])),
}
BUILTIN_DATASETS = tuple(_BUILTIN)


class DatasetError(ValueError):
    """A dataset that cannot be found or lacks the mapped columns."""


def data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("CONFROUTE_DATA_DIR", default))


def load_items(
    spec: str,
    *,
    limit: int | None = None,
    question: str = "question",
    answer: str = "answer",
    grader: str = DEFAULT_GRADER,
) -> list[Item]:
    """Items of `name:split`, a local file (`path.jsonl`, `.csv`, `.parquet`) or a hub dataset."""
    import datasets as hf

    hf.disable_progress_bars()
    if spec in _BUILTIN:
        rel, get_q, get_a = _BUILTIN[spec]
        path = data_dir() / rel
        if not path.exists():
            raise DatasetError(
                f"{spec}: {path} not found; set CONFROUTE_DATA_DIR to the data folder"
            )
        rows = _read_file("json", path)
        name, split = spec.split(":")
    else:
        rows, name, split = _load_other(spec)
        get_q, get_a = _column(spec, rows, question), _column(spec, rows, answer)
        if grader == "numeric":
            get_a = _numeric(spec, get_a)
    n = len(rows) if limit is None else min(limit, len(rows))
    return [
        Item(f"{name}/{split}/{i}", name, get_q(rows[i]), get_a(rows[i]), grader) for i in range(n)
    ]


def _read_file(kind: str, path: Path) -> Any:
    """A local file through `datasets`; a file it cannot parse is a DatasetError."""
    import datasets as hf

    try:
        return hf.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # pyarrow/datasets raise many kinds for a malformed file
        cause = exc.__cause__ or exc
        raise DatasetError(f"cannot read {path} as {kind}: {cause}") from None


def _load_other(spec: str) -> tuple[Any, str, str]:
    import datasets as hf

    path = Path(spec)
    kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if path.suffix in kinds:
        if not path.exists():
            raise DatasetError(f"dataset file {path} does not exist")
        return _read_file(kinds[path.suffix], path), path.stem, "all"
    if path.exists():  # a local file of another kind is not a hub name (it waited on the hub)
        raise DatasetError(f"{path}: a dataset file must be .jsonl, .json, .csv or .parquet")
    name, _, split = spec.partition(":")
    builtin = {b.split(":")[0] for b in BUILTIN_DATASETS}
    if name in builtin:  # a typo'd split must not wait on the hub
        splits = ", ".join(b for b in BUILTIN_DATASETS if b.startswith(name + ":"))
        raise DatasetError(f"unknown split {spec!r}; built-in splits of {name}: {splits}")
    try:
        return hf.load_dataset(name, split=split or "test"), name.replace("/", "_"), split or "test"
    except Exception as exc:  # the hub is unreachable here, or the name is unknown
        known = ", ".join(BUILTIN_DATASETS)
        raise DatasetError(
            f"cannot load dataset {spec!r} ({type(exc).__name__}: {exc}). Built in: {known}; "
            "or give a .jsonl/.csv/.parquet path"
        ) from None


def _column(spec: str, rows: Any, col: str) -> Callable[[dict[str, Any]], str]:
    if col not in rows.column_names:
        raise DatasetError(f"{spec}: no column {col!r}; columns are {rows.column_names}")
    return lambda r: str(r[col])


def _numeric(spec: str, get: _Getter) -> _Getter:
    """Gold as a canonical number ("#### 1,234" -> "1234"); a non-number is an error, not a miss."""

    def gold(row: dict[str, Any]) -> str:
        text = get(row)
        value = parse_number(text.split("####")[-1])
        if value is None:
            raise DatasetError(
                f"{spec}: gold answer {text!r} is not a number; use the exact or choice grader"
            )
        return format_number(value)

    return gold
