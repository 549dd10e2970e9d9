"""The columnar trace form (`.traces.npz`): lossless, reproducible, and loud when damaged."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from confroute.traces import (
    LOGPROB_FLOOR,
    Token,
    TopLogprob,
    Trace,
    TraceFormatError,
    append_traces,
    read_traces,
    write_traces,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def real() -> list[Trace]:
    return read_traces(FIXTURES / "traces_sample.jsonl")


def _odd_traces() -> list[Trace]:
    """What greedy reference traces never show: a sampled token outside its top-k, no alternatives,
    no tokens at all, non-finite logprobs, text that needs escaping."""
    return [
        Trace(item_id="x/0", model="m", response="a\nb \"é\" 🙂", tokens=[
            Token("a", -3.25, [TopLogprob("b", -0.1), TopLogprob("c", -1.0)]),  # not among them
            Token("\n", -0.5, []),
            Token("b", -0.2, [TopLogprob("a", -0.2), TopLogprob("b", -0.2)]),  # same logprob, rank 1
            Token("🙂", float("-inf"), [TopLogprob("🙂", float("nan"))]),
        ]),
        Trace(item_id="x/1", model="n", response="", tokens=[]),
    ]


def test_round_trip_is_lossless(tmp_path: Path, real: list[Trace]) -> None:
    path = tmp_path / "t.traces.npz"
    assert write_traces(path, real) == len(real)
    back = read_traces(path)
    assert back == real
    # float64 bit for bit, not merely close
    assert [t.logprob for t in back[0].tokens] == [t.logprob for t in real[0].tokens]
    assert [p.name for p in tmp_path.iterdir()] == ["t.traces.npz"]


def test_odd_traces_round_trip_like_jsonl(tmp_path: Path) -> None:
    odd = _odd_traces()
    write_traces(tmp_path / "t.traces.npz", odd)
    write_traces(tmp_path / "t.jsonl", odd)
    back = read_traces(tmp_path / "t.traces.npz")
    assert back == read_traces(tmp_path / "t.jsonl")  # the same floor for -inf/NaN as JSONL
    assert back[0].tokens[0] == Token("a", -3.25, [TopLogprob("b", -0.1), TopLogprob("c", -1.0)])
    assert back[0].tokens[2].token == "b"
    assert back[0].tokens[3].logprob == LOGPROB_FLOOR
    assert back[1].tokens == []


def test_smaller_than_gzip_jsonl_and_reproducible(tmp_path: Path, real: list[Trace]) -> None:
    write_traces(tmp_path / "a.traces.npz", real)
    write_traces(tmp_path / "b.traces.npz", real)
    write_traces(tmp_path / "a.jsonl.gz", real)
    a = (tmp_path / "a.traces.npz").read_bytes()
    assert a == (tmp_path / "b.traces.npz").read_bytes()
    assert len(a) < 0.75 * (tmp_path / "a.jsonl.gz").stat().st_size


def test_numpy_reads_it_without_pickles(tmp_path: Path, real: list[Trace]) -> None:
    path = tmp_path / "t.traces.npz"
    write_traces(path, real)
    with np.load(path, allow_pickle=False) as z:
        assert int(z["n_tokens"].sum()) == sum(len(t.tokens) for t in real)
        assert z["top_logprob"].dtype == np.float64


def test_directories_list_columnar_files(tmp_path: Path, real: list[Trace]) -> None:
    write_traces(tmp_path / "b.traces.npz", real[:2])
    write_traces(tmp_path / "a.jsonl", real[2:3])
    assert [t.item_id for t in read_traces(tmp_path)] == [t.item_id for t in [*real[2:3], *real[:2]]]


def test_append_is_refused_with_a_reason(tmp_path: Path, real: list[Trace]) -> None:
    path = tmp_path / "t.traces.npz"
    write_traces(path, real[:1])
    with pytest.raises(ValueError, match="written whole"):
        append_traces(path, real[1:2])
    assert read_traces(path) == real[:1]


def _rewrite(src: Path, dst: Path, name: str, arr: np.ndarray | None) -> None:
    """Copy a columnar file with one entry replaced (or left out when arr is None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != f"{name}.npy":
                zout.writestr(info, zin.read(info))
            elif arr is not None:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                zout.writestr(info, buf.getvalue())


@pytest.mark.parametrize(
    ("name", "change", "says"),
    [
        ("top_token", lambda a: a[:-1], "alternative counts disagree"),
        ("n_tokens", lambda a: a + 1, "token counts disagree"),
        ("top_token", lambda a: a + 10**6, "past the vocabulary"),
        ("rank", lambda a: np.full_like(a, 9), "past its alternatives"),
        ("x_token", lambda a: np.array([0, 0], np.uint32), "unlisted chosen tokens"),
        ("n_tokens", None, "not a readable columnar"),
        ("meta", lambda a: a[:-5], "not a readable columnar"),
    ],
)
def test_damaged_files_name_what_is_wrong(
    tmp_path: Path, real: list[Trace], name: str, change: Callable[[np.ndarray], np.ndarray] | None, says: str
) -> None:
    good = tmp_path / "good.traces.npz"
    write_traces(good, real)
    bad = tmp_path / "bad.traces.npz"
    with np.load(good) as z:
        arr = None if change is None else change(z[name])
    _rewrite(good, bad, name, arr)
    with pytest.raises(TraceFormatError, match=rf"bad\.traces\.npz: .*{says}"):
        read_traces(bad)


def test_not_a_zip_at_all(tmp_path: Path) -> None:
    path = tmp_path / "t.traces.npz"
    path.write_bytes(b'{"item_id": "a"}\n')
    with pytest.raises(TraceFormatError, match="not a readable columnar trace file"):
        read_traces(path)
