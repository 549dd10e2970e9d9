"""Trace and token types (the OpenAI `choices[0].logprobs.content` layout) and their files.

One trace is one generation by one panel model for one item. The token layout is exactly what
OpenAI-compatible servers (vLLM, llama.cpp's server, OpenAI) return, so a server response can be
handed over unchanged; unknown keys such as `bytes` are ignored.

JSON has no infinities: a non-finite logprob (a masked alternative's -inf, a NaN from a broken
engine) is written as LOGPROB_FLOOR, the floor vLLM's server also writes for -inf, so every
written file reads back. The signals treat logprobs at or below the floor as missing.

Files are JSONL (`.jsonl`, `.jsonl.gz`), one trace a line: what generation appends to and what the
contract shows. Shipped sets use the columnar form (`.traces.npz`, see `write_columnar`): the same
traces, lossless, in about half the space of gzip JSONL. Every reader takes all three.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO, Annotated, Any

import msgspec
import numpy as np

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


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str
    # tool calling, in chat requests only (traces' prompts never carry them): an assistant
    # message's calls, and the call a `tool` message answers
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None  # a participant's name, as the request gave it


# a token count as a request or a server reports it; the decision log keeps it in an INTEGER
# column (32-bit in PostgreSQL), so a negative or larger count is a decode error (a 400)
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0


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


COLUMNAR_SUFFIX = ".traces.npz"
TRACE_GLOBS = ("*.jsonl", "*.jsonl.gz", f"*{COLUMNAR_SUFFIX}")


def trace_files(directory: Path) -> list[Path]:
    """Every trace file directly in a directory (JSONL, gzip JSONL, columnar), sorted by name."""
    return sorted(f for pattern in TRACE_GLOBS for f in directory.glob(pattern))


def iter_traces(path: str | Path) -> Iterator[Trace]:
    """Yield every trace of a file; a bad line (or a damaged columnar file) raises TraceFormatError."""
    path = Path(path)
    if path.name.endswith(COLUMNAR_SUFFIX):
        yield from read_columnar(path)
        return
    for lineno, line in _lines(path):
        try:
            yield _decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise TraceFormatError(f"{path}:{lineno}: {exc}") from exc


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """A JSONL (or gzip JSONL) file's non-blank lines, numbered; a file that cannot be read as
    text (damaged gzip: zlib.error; truncated or not gzip; not UTF-8) raises TraceFormatError."""
    with _open_text(path, "rt") as fh:
        lines = enumerate(fh, start=1)
        while True:
            try:
                lineno, line = next(lines)
            except StopIteration:
                return
            except (zlib.error, EOFError, OSError, UnicodeDecodeError) as exc:
                raise TraceFormatError(f"{path}: not a readable trace file: {exc}") from None
            if line.strip():
                yield lineno, line


def read_traces(paths: str | Path | Iterable[str | Path]) -> list[Trace]:
    """Read one file, one directory (every trace file in it: `trace_files`) or several of either."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[Trace] = []
    for p in map(Path, paths):
        files = trace_files(p) if p.is_dir() else [p]
        for f in files:
            out.extend(iter_traces(f))
    return out


def append_traces(path: str | Path, traces: Iterable[Trace]) -> int:
    """Append traces to a JSONL file, flushing each line so a killed run loses at most one.

    A last line torn by a killed writer is cut first. A .gz file gets a new gzip member (readers
    take concatenated members as one stream).
    """
    path = Path(path)
    if path.name.endswith(COLUMNAR_SUFFIX):
        raise ValueError(f"{path}: a columnar trace file is written whole (write_traces), not appended to")
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
    """Write traces to a file, replacing it atomically: JSONL, gzip JSONL when the name ends in .gz,
    columnar when it ends in `.traces.npz`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        if path.name.endswith(COLUMNAR_SUFFIX):
            with tmp.open("wb") as raw:
                n = write_columnar(raw, traces)
        else:
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
    if path.name.endswith(COLUMNAR_SUFFIX):
        raise TraceFormatError(f"{path}: a columnar trace file is written whole, not appended "
                               "to; write traces to a .jsonl or .jsonl.gz file")
    keys: set[tuple[str, str]] = set()
    key_decoder = msgspec.json.Decoder(_Key)
    for lineno, line in _lines(path):
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


# Columnar form. A zip of .npy arrays (np.load reads it; no pickles), deflated, with fixed entry
# times so the same traces give the same bytes:
#   meta         uint8    JSONL: each trace without its tokens, in file order
#   vocab        uint8    a JSON list of every token string (chosen and alternatives)
#   n_tokens     int32    tokens per trace
#   top_n        uint8    alternatives per token
#   top_token    uint32   the alternatives' strings (vocab index), all tokens in order
#   top_logprob  float64  the alternatives' logprobs
#   rank         int8     where the chosen token is among its alternatives, or -1 when it is not
#                         (then its string and logprob are the next entries of x_token, x_logprob)
#   x_token      uint32,  x_logprob float64
# Logprobs stay float64, so reading gives back exactly the traces written (after the JSON floor for
# non-finite values, as in JSONL). Under greedy decoding the chosen token is always alternative 0.
_ENTRIES = ("meta", "vocab", "n_tokens", "top_n", "top_token", "top_logprob", "rank", "x_token", "x_logprob")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_columnar(raw: IO[bytes], traces: Iterable[Trace]) -> int:
    """Write traces in the columnar form to a binary stream; returns how many."""
    vocab: dict[str, int] = {}
    meta: list[bytes] = []
    n_tokens: list[int] = []
    top_n: list[int] = []
    top_token: list[int] = []
    rank: list[int] = []
    x_token: list[int] = []
    top_logprob: list[float] = []
    x_logprob: list[float] = []
    for trace in traces:
        trace = _finite(trace)
        meta.append(_encoder.encode(msgspec.structs.replace(trace, tokens=[])))
        n_tokens.append(len(trace.tokens))
        for tok in trace.tokens:
            top_n.append(len(tok.top_logprobs))
            r = -1
            for j, alt in enumerate(tok.top_logprobs):
                top_token.append(vocab.setdefault(alt.token, len(vocab)))
                top_logprob.append(alt.logprob)
                if r < 0 and alt.token == tok.token and alt.logprob == tok.logprob:
                    r = j
            rank.append(r)
            if r < 0:
                x_token.append(vocab.setdefault(tok.token, len(vocab)))
                x_logprob.append(tok.logprob)
    if max(top_n, default=0) > 127:
        raise ValueError("the columnar form holds at most 127 alternatives per token")
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(b"\n".join(meta), np.uint8),
        "vocab": np.frombuffer(msgspec.json.encode(list(vocab)), np.uint8),
        "n_tokens": np.array(n_tokens, np.int32),
        "top_n": np.array(top_n, np.uint8),
        "top_token": np.array(top_token, np.uint32),
        "top_logprob": np.array(top_logprob, np.float64),
        "rank": np.array(rank, np.int8),
        "x_token": np.array(x_token, np.uint32),
        "x_logprob": np.array(x_logprob, np.float64),
    }
    with zipfile.ZipFile(raw, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    return len(meta)


def read_columnar(path: str | Path) -> list[Trace]:
    """Read a columnar trace file; a damaged or inconsistent one raises TraceFormatError."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            a = {name: np.lib.format.read_array(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
                 for name in _ENTRIES}
        vocab = msgspec.json.decode(a["vocab"].tobytes(), type=list[str])
        lines = a["meta"].tobytes().split(b"\n") if a["meta"].size else []
        heads = [_decoder.decode(line) for line in lines]
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError,
            msgspec.DecodeError) as exc:
        raise TraceFormatError(f"{path}: not a readable columnar trace file: {exc}") from exc
    _check_columns(path, a, len(heads), len(vocab))
    tokens = [vocab[i] for i in a["top_token"].tolist()]
    logprobs = a["top_logprob"].tolist()
    x_tokens = [vocab[i] for i in a["x_token"].tolist()]
    x_logprobs = a["x_logprob"].tolist()
    top_n, ranks = a["top_n"].tolist(), a["rank"].tolist()
    out: list[Trace] = []
    pos = tok_i = x_i = 0
    for head, n in zip(heads, a["n_tokens"].tolist(), strict=True):
        toks: list[Token] = []
        for _ in range(n):
            k, r = top_n[tok_i], ranks[tok_i]
            alts = [TopLogprob(tokens[j], logprobs[j]) for j in range(pos, pos + k)]
            if r < 0:
                toks.append(Token(x_tokens[x_i], x_logprobs[x_i], alts))
                x_i += 1
            else:
                toks.append(Token(alts[r].token, alts[r].logprob, alts))
            pos += k
            tok_i += 1
        out.append(msgspec.structs.replace(head, tokens=toks))
    return out


def _check_columns(path: Path, a: dict[str, np.ndarray], n_traces: int, n_vocab: int) -> None:
    """The arrays agree with each other, so reading cannot run off an end or pick a wrong token."""
    top_n, rank = a["top_n"], a["rank"]
    problems = [
        (a["n_tokens"].size != n_traces, "n_tokens does not have one entry per trace"),
        (bool((a["n_tokens"] < 0).any()), "negative token counts"),
        (int(a["n_tokens"].sum()) != top_n.size or rank.size != top_n.size, "token counts disagree"),
        (int(top_n.sum(dtype=np.int64)) != a["top_token"].size, "alternative counts disagree"),
        (a["top_token"].size != a["top_logprob"].size, "alternative arrays differ in length"),
        (bool((rank >= top_n.astype(np.int16)).any()), "a chosen-token rank points past its alternatives"),
        (int((rank < 0).sum()) != a["x_token"].size or a["x_token"].size != a["x_logprob"].size,
         "unlisted chosen tokens disagree"),
        (bool((a["top_token"] >= n_vocab).any() or (a["x_token"] >= n_vocab).any()),
         "token index past the vocabulary"),
    ]
    for bad, what in problems:
        if bad:
            raise TraceFormatError(f"{path}: damaged columnar trace file: {what}")
