"""Trace JSONL I/O: round trips, errors that name file, line and field, torn lines, vLLM's keys."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from confroute.traces import (
    LOGPROB_FLOOR,
    Generator,
    Message,
    Token,
    TopLogprob,
    Trace,
    TraceFormatError,
    Usage,
    append_traces,
    decode_trace,
    done_keys,
    encode_trace,
    iter_traces,
    read_traces,
    write_traces,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _trace(item: str, model: str = "m", response: str = "The answer is: 18") -> Trace:
    toks = [
        Token(" 18", -0.02, [TopLogprob(" 18", -0.02), TopLogprob(" 16", -4.1)]),
        Token(".", -0.5, [TopLogprob(".", -0.5)]),
    ]
    return Trace(
        item_id=item,
        model=model,
        response=response,
        tokens=toks,
        dataset="gsm8k",
        messages=[Message("user", "q?")],
        finish_reason="length",
        usage=Usage(120, 2),
        latency_s=3.2,
        gold="18",
        prediction="18",
        correct=True,
        generator=Generator("llamacpp", 0.0, 5, 512, "v1"),
    )


@pytest.fixture(scope="module")
def real() -> list[Trace]:
    """Real traces of the reference models (copied from the reference run)."""
    return read_traces(FIXTURES / "traces_sample.jsonl")


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_round_trip_real_traces(tmp_path: Path, real: list[Trace], name: str) -> None:
    path = tmp_path / name
    assert write_traces(path, real) == len(real)
    assert read_traces(path) == real
    if name.endswith(".gz"):
        with gzip.open(path) as fh:  # really compressed, not plain text named .gz
            assert fh.read(1) == b"{"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_gzip_output_is_byte_for_byte_reproducible(tmp_path: Path, real: list[Trace]) -> None:
    # Re-compacting unchanged traces must not change the shipped file (no name or time in the header).
    (tmp_path / "other").mkdir()
    write_traces(tmp_path / "a.jsonl.gz", real)
    write_traces(tmp_path / "other" / "b.jsonl.gz", real)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "other" / "b.jsonl.gz").read_bytes()
    write_traces(tmp_path / "c.jsonl.gz", real[:-1])
    assert (tmp_path / "c.jsonl.gz").read_bytes() != (tmp_path / "a.jsonl.gz").read_bytes()


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_append_adds_after_existing(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_traces(path, [_trace("a/0")])
    assert append_traces(path, [_trace("a/1"), _trace("a/2", "n")]) == 2
    assert [t.item_id for t in read_traces(path)] == ["a/0", "a/1", "a/2"]
    assert done_keys(path) == {("m", "a/0"), ("m", "a/1"), ("n", "a/2")}


def test_defaults_are_omitted_and_restored(tmp_path: Path) -> None:
    minimal = Trace(item_id="x/1", model="m", response="", tokens=[])
    line = encode_trace(minimal)
    assert json.loads(line) == {"item_id": "x/1", "model": "m", "response": "", "tokens": []}
    assert decode_trace(line) == minimal
    assert decode_trace(line).finish_reason == "stop"


def test_openai_layout_with_unknown_keys_is_accepted() -> None:
    """vLLM/OpenAI put `bytes` on each token and alternative; llama.cpp's server adds `id`."""
    line = {
        "item_id": "x/1", "model": "m", "response": "Hi", "unknown_top_level": {"a": 1},
        "tokens": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "id": 7,
                    "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                                     {"token": "Hello", "logprob": -2.3, "bytes": None}]}],
    }
    t = decode_trace(json.dumps(line))
    assert t.tokens[0] == Token("Hi", -0.1, [TopLogprob("Hi", -0.1), TopLogprob("Hello", -2.3)])


def test_non_finite_logprobs_are_written_readably(tmp_path: Path) -> None:
    """JSON has no -inf: the writer uses vLLM's floor so the file reads back."""
    t = Trace(item_id="x/1", model="m", response="a", tokens=[
        Token("a", float("-inf"), [TopLogprob("a", -0.1), TopLogprob("b", float("nan"))]),
    ])
    path = tmp_path / "t.jsonl"
    write_traces(path, [t])
    back = read_traces(path)[0]
    assert back.tokens[0].logprob == LOGPROB_FLOOR
    assert [a.logprob for a in back.tokens[0].top_logprobs] == [-0.1, LOGPROB_FLOOR]
    assert all(math.isfinite(a.logprob) for a in back.tokens[0].top_logprobs)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_bad_field_names_file_line_and_field(tmp_path: Path) -> None:
    good = encode_trace(_trace("a/0")).decode()
    bad = json.loads(good)
    bad["tokens"][0]["logprob"] = "high"
    path = tmp_path / "t.jsonl"
    _write_lines(path, [good, "", json.dumps(bad)])
    with pytest.raises(TraceFormatError) as err:
        read_traces(path)
    msg = str(err.value)
    assert f"{path}:3:" in msg  # the blank line counts: line numbers are the editor's
    assert "$.tokens[0].logprob" in msg


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("model"), "`model`"),
        (lambda d: d["tokens"][1]["top_logprobs"][0].pop("token"), "$.tokens[1].top_logprobs[0]"),
        (lambda d: d.update(usage={"prompt_tokens": "many"}), "$.usage.prompt_tokens"),
    ],
)
def test_each_bad_field_is_named(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], field: str
) -> None:
    d = json.loads(encode_trace(_trace("a/0")))
    edit(d)
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(d) + "\n")
    with pytest.raises(TraceFormatError, match=rf"t\.jsonl\.gz:1: .*{re.escape(field)}"):
        list(iter_traces(path))


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    _write_lines(path, [encode_trace(_trace("a/0")).decode(), '{"item_id": "a/1", "mod'])
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:2: .*malformed"):
        read_traces(path)


def test_read_traces_keeps_every_line(tmp_path: Path, real: list[Trace]) -> None:
    """Duplicates and blank lines included: reading never drops or merges a trace."""
    path = tmp_path / "t.jsonl"
    lines = [encode_trace(t).decode() for t in real]
    _write_lines(path, [lines[0], "", "   ", *lines, lines[0]])
    got = read_traces(path)
    assert len(got) == len(real) + 2
    assert got[0] == got[-1] == real[0]


def test_read_directory_and_several_paths(tmp_path: Path) -> None:
    write_traces(tmp_path / "b.jsonl.gz", [_trace("b/0")])
    write_traces(tmp_path / "a.jsonl", [_trace("a/0"), _trace("a/1")])
    (tmp_path / "notes.txt").write_text("not traces")
    assert [t.item_id for t in read_traces(tmp_path)] == ["a/0", "a/1", "b/0"]
    both = read_traces([tmp_path / "b.jsonl.gz", str(tmp_path / "a.jsonl")])
    assert [t.item_id for t in both] == ["b/0", "a/0", "a/1"]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_traces(tmp_path / "nope.jsonl")


def test_torn_last_line_ignored_by_done_keys_and_cut_by_append(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    whole = encode_trace(_trace("a/0")).decode() + "\n"
    torn = encode_trace(_trace("a/1")).decode()[:57]  # a killed writer: no closing brace, no \n
    path.write_text(whole + torn, encoding="utf-8")
    assert done_keys(path) == {("m", "a/0")}
    with pytest.raises(TraceFormatError, match=":2:"):
        read_traces(path)  # a reader is told, never handed a partial set silently
    append_traces(path, [_trace("a/1")])
    assert [t.item_id for t in read_traces(path)] == ["a/0", "a/1"]


def test_done_keys_refuses_a_damaged_middle_line(tmp_path: Path) -> None:
    """Only a torn *last* line may be skipped; a bad line inside would be silently redone."""
    path = tmp_path / "t.jsonl"
    _write_lines(path, ['{"item_id": 3}', encode_trace(_trace("a/0")).decode()])
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1:"):
        done_keys(path)


def test_done_keys_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert done_keys(tmp_path / "nope.jsonl") == set()


def test_traces_are_frozen() -> None:
    with pytest.raises(AttributeError):
        _trace("a/0").model = "other"  # type: ignore[misc]


def test_decode_error_is_msgspec_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.tokens"):
        decode_trace(b'{"item_id": "a", "model": "m", "response": "", "tokens": {}}')
