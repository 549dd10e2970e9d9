"""Trace and token types (the OpenAI `choices[0].logprobs.content` layout) and JSONL I/O.

One trace is one generation by one panel model for one item. The token layout is exactly what
OpenAI-compatible servers (vLLM, llama.cpp's server, OpenAI) return, so a server response can be
handed over unchanged; unknown keys such as `bytes` are ignored.

JSON has no infinities: a non-finite logprob (a masked alternative's -inf, a NaN from a broken
engine) is written as LOGPROB_FLOOR, the floor vLLM's server also writes for -inf, so every
written file reads back. The signals treat logprobs at or below the floor as missing.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO

import msgspec

LOGPROB_FLOOR = -9999.0  # what a non-finite logprob is written as (vLLM's server does the same)


# gc=False: these hold only strings, numbers and lists of each other, never a cycle, so the
# garbage collector need not track them; a 300-token reply is ~1,800 of them, and tracking them
# set off collections in the middle of requests.
class TopLogprob(msgspec.Struct, frozen=True, gc=False):
    """One alternative at a token position."""

    token: str
    logprob: float


class Token(msgspec.Struct, frozen=True, gc=False):
    """One generated token with its logprob and the top-k alternatives (chosen one included)."""

    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = []


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Generator(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a trace was produced; enough to reproduce it."""

    backend: str
    temperature: float = 0.0
    top_logprobs: int = 5
    max_tokens: int = 512
    version: str | None = None
    n_parallel: int | None = None  # sequences decoded together: batch numerics differ slightly


class Trace(msgspec.Struct, frozen=True, omit_defaults=True):
    """One generation, one JSON line (DESIGN.md, "Trace")."""

    item_id: str
    model: str
    response: str
    tokens: list[Token]
    dataset: str = ""
    messages: list[Message] = []
    finish_reason: str = "stop"
    usage: Usage = Usage()
    latency_s: float = 0.0
    gold: str | None = None
    prediction: str | None = None
    correct: bool | None = None
    generator: Generator | None = None


class TraceFormatError(ValueError):
    """A trace file line that does not decode; names the file, line and field."""


_decoder = msgspec.json.Decoder(Trace)
_encoder = msgspec.json.Encoder()


def decode_trace(data: bytes | str) -> Trace:
    """Decode one JSON trace; raise msgspec.ValidationError naming the field on bad input."""
    return _decoder.decode(data)


def encode_trace(trace: Trace) -> bytes:
    """One JSON line (without the newline); non-finite logprobs become LOGPROB_FLOOR."""
    return _encoder.encode(_finite(trace))


def _finite(trace: Trace) -> Trace:
    """The trace with every non-finite logprob replaced by LOGPROB_FLOOR (JSON has no -inf)."""
    if all(_all_finite(t) for t in trace.tokens):
        return trace
    tokens = [
        Token(
            t.token,
            _floor(t.logprob),
            [TopLogprob(a.token, _floor(a.logprob)) for a in t.top_logprobs],
        )
        for t in trace.tokens
    ]
    return msgspec.structs.replace(trace, tokens=tokens)


def _all_finite(t: Token) -> bool:
    return math.isfinite(t.logprob) and all(math.isfinite(a.logprob) for a in t.top_logprobs)


def _floor(x: float) -> float:
    return x if math.isfinite(x) else LOGPROB_FLOOR


def _open_text(path: Path, mode: str, gz: bool | None = None) -> IO[str]:
    """A text file, gzip-compressed when `gz` (default: when the name ends in .gz)."""
    if path.suffix == ".gz" if gz is None else gz:
        return io.TextIOWrapper(gzip.GzipFile(path, mode.replace("t", "") + "b"), encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def iter_traces(path: str | Path) -> Iterator[Trace]:
    """Yield every trace of a JSONL file (optionally .gz); a bad line raises TraceFormatError."""
    path = Path(path)
    with _open_text(path, "rt") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield _decoder.decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise TraceFormatError(f"{path}:{lineno}: {exc}") from exc


def read_traces(paths: str | Path | Iterable[str | Path]) -> list[Trace]:
    """Read one file, one directory (every *.jsonl and *.jsonl.gz in it) or several of either."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[Trace] = []
    for p in map(Path, paths):
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")]) if p.is_dir() else [p]
        for f in files:
            out.extend(iter_traces(f))
    return out


def append_traces(path: str | Path, traces: Iterable[Trace]) -> int:
    """Append traces to a JSONL file, flushing each line so a killed run loses at most one.

    A last line torn by a killed writer is cut first. A .gz file gets a new gzip member (readers
    take concatenated members as one stream).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = path.suffix == ".gz"
    if not gz:
        _drop_torn_tail(path)
    n = 0
    with gzip.open(path, "ab") if gz else path.open("ab") as fh:
        for t in traces:
            fh.write(encode_trace(t) + b"\n")
            fh.flush()
            n += 1
    return n


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a killed writer, so appends stay valid."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def write_traces(path: str | Path, traces: Iterable[Trace]) -> int:
    """Write traces to a JSONL file (gzip when the name ends in .gz), replacing it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with tmp.open("wb") as raw, _gzip_writer(raw, path.suffix == ".gz") as fh:
            for t in traces:
                fh.write(encode_trace(t) + b"\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def done_keys(path: str | Path) -> set[tuple[str, str]]:
    """(model, item_id) pairs already in a trace file, for resuming.

    A last line torn by a kill mid-write (no newline) is ignored: it is generated again. Any other
    line that does not decode raises TraceFormatError, so a damaged file is not silently redone.
    """
    path = Path(path)
    if not path.exists():
        return set()
    keys: set[tuple[str, str]] = set()
    key_decoder = msgspec.json.Decoder(_Key)
    with _open_text(path, "rt") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                k = key_decoder.decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                if not line.endswith("\n"):
                    continue  # torn by a kill mid-write
                raise TraceFormatError(f"{path}:{lineno}: {exc}") from exc
            keys.add((k.model, k.item_id))
    return keys


class _Key(msgspec.Struct):
    item_id: str
    model: str


def _gzip_writer(raw: IO[bytes], gz: bool) -> AbstractContextManager[IO[bytes] | gzip.GzipFile]:
    """`raw` itself, or a gzip stream into it with no name or time in its header (same traces, same
    bytes)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else nullcontext(raw)
