"""A trace's tokens as arrays: the input of every confidence signal (confroute.features).

Special and stop tokens and missing logprobs (non-finite, or at/below LOGPROB_FLOOR, what servers
write for -inf) are dropped; alternatives are sorted descending with NaN where missing.
`token_arrays` is the vectorised path used everywhere; `reference_token_arrays` is the plain
definition it is parity-tested against; `compact_arrays` reads the numeric-array request form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

import numpy as np

from confroute.traces import LOGPROB_FLOOR

_SPECIAL = re.compile(
    r"^<[|｜][^|｜]*[|｜]>$|^</?s>$|^<(?:eos|bos|pad|unk)>$|^<(?:start|end)_of_turn>$"
)


class AltLike(Protocol):
    @property
    def logprob(self) -> float: ...


class TokenLike(Protocol):
    """traces.Token, or the service decoder's lighter WireToken: what the arrays read."""

    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top_logprobs(self) -> Sequence[AltLike]: ...


@dataclass(frozen=True)
class TokenArrays:
    """A trace's kept tokens as arrays. top is (n, k) sorted descending, NaN where missing."""

    logprob: np.ndarray  # (n,)
    top: np.ndarray  # (n, k)
    offsets: np.ndarray  # (n + 1,) character offsets of token starts in `text`
    text: str  # the kept tokens joined: where the answer span is looked up


def is_special(token: str) -> bool:
    """Special and stop tokens (<|im_end|>, </s>, ...) are left out of every signal."""
    return bool(_SPECIAL.match(token))


def _present(logprob: float) -> bool:
    """A logprob that carries information: finite and above the floor written for -inf."""
    return math.isfinite(logprob) and logprob > LOGPROB_FLOOR


def reference_token_arrays(tokens: Sequence[TokenLike]) -> TokenArrays:
    """Token arrays, one token at a time: the definition token_arrays is checked against."""
    kept = [t for t in tokens if not is_special(t.token) and _present(t.logprob)]
    n = len(kept)
    k = max((len(t.top_logprobs) for t in kept), default=0)
    top = np.full((n, k), np.nan)
    for i, t in enumerate(kept):
        if t.top_logprobs:
            vals = sorted((a.logprob for a in t.top_logprobs), reverse=True)
            top[i, : len(vals)] = vals
    top[~(np.isfinite(top) & (top > LOGPROB_FLOOR))] = np.nan  # masked alternatives: no information
    lengths = np.fromiter((len(t.token) for t in kept), dtype=np.int64, count=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    logprob = np.fromiter((t.logprob for t in kept), dtype=np.float64, count=n)
    return TokenArrays(logprob, top, offsets, "".join(t.token for t in kept))


_alts = attrgetter("top_logprobs")


def token_arrays(tokens: Sequence[TokenLike]) -> TokenArrays:
    """OpenAI-layout tokens as arrays without special tokens and missing logprobs (vectorised).

    The common case, every token with the same number of alternatives, is done in a few numpy
    passes; anything else goes through reference_token_arrays, which defines the result.
    """
    n = len(tokens)
    alts = list(map(_alts, tokens))
    ks = list(map(len, alts))
    k = ks[0] if n else 0
    if n == 0 or min(ks) != max(ks):
        return reference_token_arrays(tokens)
    lp = np.fromiter([t.logprob for t in tokens], dtype=np.float64, count=n)
    flat = [a.logprob for row in alts for a in row]
    top = np.fromiter(flat, dtype=np.float64, count=n * k).reshape(n, k)
    if k > 1 and not (top[:, :-1] >= top[:, 1:]).all():  # servers send them sorted already
        top = np.sort(top, axis=1)[:, ::-1]
    top[~(np.isfinite(top) & (top > LOGPROB_FLOOR))] = np.nan  # masked alternatives
    strs = [t.token for t in tokens]
    text = "".join(strs)
    keep = np.isfinite(lp) & (lp > LOGPROB_FLOOR)
    if "<" in text:  # only then can there be special tokens
        keep &= np.array([not is_special(s) for s in strs], dtype=bool)
    if not keep.all():
        lp, top = lp[keep], top[keep] if keep.any() else np.empty((0, 0))
        strs = [s for s, ok in zip(strs, keep, strict=True) if ok]
        text = "".join(strs)
    return _arrays(lp, np.ascontiguousarray(top), strs, text)


def compact_arrays(
    logprob: Sequence[float], top: Sequence[Sequence[float]], tokens: Sequence[str] | None
) -> TokenArrays:
    """TokenArrays from numeric arrays; `tokens` (optional) locate the answer, drop specials.

    Rows of equal width (the usual reply) become one array in a single numpy call; ragged rows
    are NaN-padded row by row.
    """
    lp = np.asarray(logprob, dtype=np.float64)
    n = lp.size
    widths = set(map(len, top))
    if len(widths) == 1 and len(top) == n:
        tp = np.array(top, dtype=np.float64).reshape(n, widths.pop())
    else:
        tp = np.full((n, max(widths, default=0)), np.nan)
        for i, row in enumerate(top):
            tp[i, : len(row)] = row
    if tp.shape[1] > 1 and not (tp[:, :-1] >= tp[:, 1:]).all():  # usually sorted already
        tp = -np.sort(-tp, axis=1)  # descending; NaN stays last
    tp[~(np.isfinite(tp) & (tp > LOGPROB_FLOOR))] = np.nan
    strs = list(tokens) if tokens is not None else [""] * n
    text = "".join(strs)
    keep = np.isfinite(lp) & (lp > LOGPROB_FLOOR)
    if "<" in text:  # only then can there be special tokens
        keep &= np.array([not is_special(s) for s in strs], dtype=bool)
    if keep.all():
        return _arrays(lp, np.ascontiguousarray(tp), strs, text)
    strs = [s for s, ok in zip(strs, keep, strict=True) if ok]
    kept = tp[keep] if keep.any() else np.empty((0, 0))
    return _arrays(lp[keep], np.ascontiguousarray(kept), strs)


def _arrays(lp: np.ndarray, top: np.ndarray, strs: list[str], text: str | None = None
            ) -> TokenArrays:
    lengths = np.fromiter(map(len, strs), dtype=np.int64, count=len(strs))
    offsets = np.zeros(len(strs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenArrays(lp, top, offsets, "".join(strs) if text is None else text)


def select(arr: TokenArrays, keep: np.ndarray) -> TokenArrays:
    """The tokens where `keep` (a bool per token) holds, text and offsets rebuilt."""
    starts, ends = arr.offsets[:-1][keep], arr.offsets[1:][keep]
    strs = [arr.text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    top = arr.top[keep] if keep.any() else np.empty((0, 0))
    return _arrays(arr.logprob[keep], np.ascontiguousarray(top), strs)
