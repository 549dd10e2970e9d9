"""Confidence signals over one trace, and FEATURE_NAMES, the column order of training and serving.

Per kept token i: the chosen token's logprob lp_i and its top-k alternatives' logprobs. Token
confidence follows DeepConf (arXiv 2508.15260): C_i = -(1/k_i) * sum_j toplogprob_ij, over the k_i
alternatives the server returned (k_i may be smaller than the k asked; the mean is then over those).

Missing data are explicit, never a silent zero:
- special and stop tokens (<|im_end|>, <|endoftext|>, </s>, ...) are dropped before anything else;
- a logprob that is not finite or is at/below LOGPROB_FLOOR (-9999, what vLLM's server and the
  trace writer use for -inf) is missing: such a chosen token is dropped, such an alternative
  ignored;
- a trace with no kept tokens has `has_logprobs = 0` and every logprob signal NaN;
- a token without alternatives counts for lp signals but not for C/margin/entropy signals; if no
  token has alternatives those signals are NaN;
- `margin` needs two alternatives at a token; tokens with one are left out of its mean;
- answer-span signals are NaN when no answer could be extracted or located in the tokens.
The scorer refuses to score a row without logprobs (the policy then escalates; see scoring.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from confroute.grading import Extraction, Grader, NumericGrader
from confroute.tokens import TokenArrays, token_arrays
from confroute.tokens import is_special as is_special  # re-exported: the filter signals use
from confroute.traces import Trace

FEATURE_NAMES: tuple[str, ...] = (
    "has_logprobs",  # 1 if any kept token carries a logprob, else 0
    "avg_logprob",  # mean lp_i
    "min_logprob",  # min lp_i
    "avg_confidence",  # mean C_i ("average trace confidence")
    "margin",  # mean over tokens of top-1 minus top-2 logprob
    "bottom10_group",  # mean of the lowest 10% of sliding-window group confidences
    "lowest_group",  # minimum group confidence
    "tail_confidence",  # mean C_i over the last `tail` tokens
    "answer_logprob",  # mean lp_i over the tokens of the extracted final answer
    "answer_min_logprob",  # min lp_i over those tokens
    "answer_confidence",  # mean C_i over those tokens
    "entropy_mean",  # mean entropy of the renormalised top-k distribution
    "entropy_max",  # max of that entropy
    "length",  # completion tokens
    "truncated",  # finish_reason == "length"
    "answer_found",  # 1 if a final answer was extracted from the text
    "agree_prev",  # share of cheaper models' answers equal to this one; NaN for the first model
)

@dataclass(frozen=True)
class FeatureConfig:
    """Window sizes of the windowed signals (tokens); stored in the manifest with the model."""

    group_window: int = 16  # sliding window for group confidence; answers here run 150-270 tokens
    tail: int = 16  # last tokens for tail confidence: the answer and its lead-in
    bottom_frac: float = 0.10  # share of lowest groups averaged by bottom10_group

    def __post_init__(self) -> None:
        if not (isinstance(self.group_window, int) and self.group_window >= 1
                and isinstance(self.tail, int) and self.tail >= 0
                and 0 < self.bottom_frac <= 1):
            raise ValueError(f"feature config {self}: needs group_window >= 1, tail >= 0 and "
                             f"0 < bottom_frac <= 1")


def token_confidence(top: np.ndarray) -> np.ndarray:
    """C_i = -mean of the available top-k logprobs per token; NaN for tokens without any."""
    if top.shape[1] == 0:
        return np.full(top.shape[0], np.nan)
    with warnings.catch_warnings():  # an all-NaN row is an expected, documented NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return -np.nanmean(top, axis=1)


def group_confidences(conf: np.ndarray, window: int) -> np.ndarray:
    """Mean C over every window of `window` consecutive tokens (one group if fewer tokens)."""
    c = conf[np.isfinite(conf)]
    if c.size == 0:
        return c
    w = min(window, c.size)
    csum = np.concatenate([[0.0], np.cumsum(c)])
    return (csum[w:] - csum[:-w]) / w


def topk_entropy(top: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the top-k distribution renormalised per token; NaN without alternatives."""
    if top.shape[1] == 0:
        return np.full(top.shape[0], np.nan)
    filled = np.where(np.isnan(top), -np.inf, top)
    peak = filled.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.exp(filled - peak)  # a row without alternatives: -inf - -inf = NaN, zeroed next
    p = np.where(np.isnan(p), 0.0, p)
    total = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / total
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    h[total[:, 0] == 0] = np.nan
    return h


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _min(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.min()) if x.size else float("nan")


def _max(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else float("nan")


def answer_token_slice(arr: TokenArrays, span: tuple[int, int] | None) -> slice | None:
    """Tokens overlapping a character span of the joined token text; None if not located."""
    if span is None or arr.logprob.size == 0:
        return None
    start, end = span
    first = int(arr.offsets.searchsorted(start, side="right")) - 1  # the method: no np wrapper
    last = int(arr.offsets.searchsorted(end, side="left"))
    if first < 0 or last <= first or first >= arr.logprob.size:
        return None
    return slice(first, min(last, arr.logprob.size))


def reference_signals(
    arr: TokenArrays,
    *,
    answer: slice | None = None,
    answer_found: bool = False,
    truncated: bool = False,
    length: int | None = None,
    agree_prev: float = float("nan"),
    config: FeatureConfig = FeatureConfig(),
) -> np.ndarray:
    """Every signal, in FEATURE_NAMES order, one definition per signal: what the fast path matches."""
    lp, top = arr.logprob, arr.top
    conf = token_confidence(top)
    groups = group_confidences(conf, config.group_window)
    if groups.size:
        n_low = max(1, int(np.ceil(config.bottom_frac * groups.size)))
        bottom = float(np.partition(groups, n_low - 1)[:n_low].mean())
    else:
        bottom = float("nan")
    margin = top[:, 0] - top[:, 1] if top.shape[1] >= 2 else np.full(lp.size, np.nan)
    entropy = topk_entropy(top)
    finite_conf = conf[np.isfinite(conf)]
    a_lp = lp[answer] if answer is not None else np.empty(0)
    a_conf = conf[answer] if answer is not None else np.empty(0)
    return np.array(
        [
            1.0 if lp.size else 0.0,
            _mean(lp),
            _min(lp),
            _mean(conf),
            _mean(margin),
            bottom,
            _min(groups),
            _mean(finite_conf[-config.tail :]) if finite_conf.size else float("nan"),
            _mean(a_lp),
            _min(a_lp),
            _mean(a_conf),
            _mean(entropy),
            _max(entropy),
            float(lp.size if length is None else length),
            1.0 if truncated else 0.0,
            1.0 if answer_found else 0.0,
            agree_prev,
        ]
    )


def signals_from_arrays(
    arr: TokenArrays,
    *,
    answer: slice | None = None,
    answer_found: bool = False,
    truncated: bool = False,
    length: int | None = None,
    agree_prev: float = float("nan"),
    config: FeatureConfig = FeatureConfig(),
) -> np.ndarray:
    """Every signal, in FEATURE_NAMES order (the service's hot path).

    With complete top-k (k >= 2, no NaN: the usual server reply) one compiled pass over the tokens
    computes them all (numba; a few µs for 300 tokens, where ~25 numpy calls cost ~80 µs); anything
    else goes through reference_signals, which defines them.
    """
    lp, top = arr.logprob, arr.top
    if lp.size and top.ndim == 2 and top.shape[1] >= 2:
        from confroute.kernels import signals_kernel  # numba loads on first use, not on import

        a0, a1, _ = answer.indices(lp.size) if answer is not None else (0, 0, 1)
        top = np.ascontiguousarray(top, dtype=np.float64)
        out = signals_kernel(
            np.ascontiguousarray(lp, dtype=np.float64), top, np.exp(top), a0, a1,
            config.group_window, config.tail, config.bottom_frac,
            float(lp.size if length is None else length), float(truncated), float(answer_found),
            agree_prev,
        )
        if out.size:  # empty: top-k with NaN (fewer alternatives than asked somewhere)
            return out
    return reference_signals(
        arr, answer=answer, answer_found=answer_found, truncated=truncated, length=length,
        agree_prev=agree_prev, config=config,
    )


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the signal kernel now, not on a first request."""
    top = np.array([[-0.1, -2.5], [-0.3, -1.5]])
    signals_from_arrays(TokenArrays(top[:, 0].copy(), top, np.array([0, 1, 2]), "ab"))


def agreement(prediction: str | None, previous: Sequence[str | None], grader: Grader) -> float:
    """Share of cheaper models' answers that the grader judges equal to this one; NaN if none."""
    if not previous:
        return float("nan")
    if prediction is None:
        return 0.0
    return float(np.mean([p is not None and grader.is_correct(prediction, p) for p in previous]))


def answer_features(
    arr: TokenArrays,
    *,
    text: str | None = None,
    finish_reason: str | None = None,
    length: int | None = None,
    previous: Sequence[str | None] = (),
    grader: Grader | None = None,
    config: FeatureConfig = FeatureConfig(),
    prediction: str | None = None,
) -> tuple[np.ndarray, str | None]:
    """The one path from an answer to its feature row (FEATURE_NAMES order) and its answer.

    `arr`: the answer's tokens; `text`: its text when the tokens carry none; `length`: completion
    tokens when the server reported them; `previous`: the earlier stages' extracted answers,
    cheapest first; `prediction`: an answer already extracted (a trace's), else the grader's.
    Training (through `extract_signals`), the engine and the evaluation all call this."""
    grader = grader or NumericGrader()
    ext: Extraction | None = grader.extract(arr.text or text or "")
    if prediction is None:
        prediction = ext.value if ext is not None else None
    span = (ext.start, ext.end) if ext is not None and arr.text else None
    row = signals_from_arrays(
        arr,
        answer=answer_token_slice(arr, span),
        answer_found=ext is not None,
        truncated=finish_reason == "length",
        length=length,
        agree_prev=agreement(prediction, previous, grader),
        config=config,
    )
    return row, prediction


def extract_signals(
    trace: Trace,
    *,
    previous: Sequence[str | None] = (),
    grader: Grader | None = None,
    config: FeatureConfig = FeatureConfig(),
) -> np.ndarray:
    """Every signal of one trace, in FEATURE_NAMES order. `previous`: cheaper models' answers."""
    row, _ = answer_features(
        token_arrays(trace.tokens), text=trace.response, finish_reason=trace.finish_reason,
        length=trace.usage.completion_tokens or None, previous=previous, grader=grader,
        config=config, prediction=trace.prediction,
    )
    return row
