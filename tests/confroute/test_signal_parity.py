"""The fast token arrays and the compiled signal kernel give what the reference definitions give."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confroute.features import (
    FeatureConfig,
    TokenArrays,
    answer_token_slice,
    extract_signals,
    reference_signals,
    signals_from_arrays,
)
from confroute.grading import NumericGrader
from confroute.tokens import compact_arrays, reference_token_arrays, token_arrays
from confroute.traces import LOGPROB_FLOOR, Token, TopLogprob, Trace, read_traces


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    """Real traces (SmolLM2 and Qwen2.5-Coder-0.5B answers with top-5 logprobs)."""
    return read_traces(Path(__file__).parent / "fixtures" / "traces_sample.jsonl")


def _same_arrays(a: TokenArrays, b: TokenArrays) -> None:
    np.testing.assert_array_equal(a.logprob, b.logprob)
    np.testing.assert_array_equal(a.top, b.top)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.text == b.text


def _signals(arr: TokenArrays, config: FeatureConfig, fast: bool) -> np.ndarray:
    ext = NumericGrader().extract(arr.text)
    span = (ext.start, ext.end) if ext else None
    kw: Any = {"answer": answer_token_slice(arr, span), "answer_found": ext is not None,
               "truncated": False, "length": None, "agree_prev": 0.5, "config": config}
    return signals_from_arrays(arr, **kw) if fast else reference_signals(arr, **kw)


def test_real_traces_match_features(traces: list[Trace]) -> None:
    for t in traces:
        fast, ref = token_arrays(t.tokens), reference_token_arrays(t.tokens)
        _same_arrays(fast, ref)
        for config in (FeatureConfig(), FeatureConfig(group_window=4, tail=3, bottom_frac=0.3),
                       FeatureConfig(group_window=10_000, tail=0, bottom_frac=1.0)):
            np.testing.assert_allclose(_signals(fast, config, True), _signals(ref, config, False),
                                       rtol=1e-12, atol=1e-12)


def _noisy_tokens(rng: np.random.Generator, n: int, k: int, mask_alts: bool = True) -> list[Token]:
    out = []
    for i in range(n):
        alts = sorted(rng.uniform(-12, 0, k), reverse=True)
        text = rng.choice([" 18", " apples", "<|im_end|>", " =", "</s>", " The answer is: 7"])
        lp = float(alts[0]) if i % 17 else LOGPROB_FLOOR  # some masked chosen tokens
        tops = [TopLogprob(f"t{j}", float(v)) for j, v in enumerate(rng.permutation(alts))]
        if mask_alts and i % 23 == 0:
            tops[-1] = TopLogprob("masked", LOGPROB_FLOOR)  # a masked alternative
        out.append(Token(str(text), lp, tops))
    return out


@pytest.mark.parametrize(("n", "k", "mask_alts"),
                         [(300, 5, True), (40, 2, True), (7, 1, True), (1, 5, True),
                          (300, 5, False)])
def test_specials_masks_and_shapes_match_features(n: int, k: int, mask_alts: bool) -> None:
    """token_arrays equals its reference with special tokens and masked logprobs; so do the
    signals. A masked alternative, k = 1 or no kept token sends signals_from_arrays to the
    reference definitions; the last case (masked chosen tokens and specials only) reaches the
    compiled kernel."""
    from confroute.kernels import signals_kernel

    rng = np.random.default_rng(n * 10 + k)
    toks = _noisy_tokens(rng, n, k, mask_alts=mask_alts)
    fast, ref = token_arrays(toks), reference_token_arrays(toks)
    _same_arrays(fast, ref)
    np.testing.assert_allclose(_signals(fast, FeatureConfig(), True),
                               _signals(ref, FeatureConfig(), False), rtol=1e-12, atol=1e-12)
    if not mask_alts:
        assert fast.logprob.size < n  # masked chosen tokens and specials were dropped
        assert signals_kernel(fast.logprob, fast.top, np.exp(fast.top), 0, 0, 16, 16, 0.1,
                              float(n), 0.0, 0.0, math.nan).size == 17


@pytest.mark.parametrize(("n", "k"), [(300, 5), (40, 2), (3, 5), (64, 20)])
def test_compiled_kernel_matches_reference_signals(n: int, k: int) -> None:
    """Complete top-k (the kernel's case): the kernel itself answers, and equals the reference."""
    from confroute.kernels import signals_kernel

    rng = np.random.default_rng(n * 100 + k)
    arr = token_arrays(_noisy_tokens(rng, n, k, mask_alts=False))
    assert arr.top.shape[1] == k and not np.isnan(arr.top).any() and arr.logprob.size > 0
    for config in (FeatureConfig(), FeatureConfig(group_window=4, tail=3, bottom_frac=0.3),
                   FeatureConfig(group_window=10_000, tail=0, bottom_frac=1.0)):
        for answer in (slice(0, 0), slice(arr.logprob.size - 2, arr.logprob.size)):
            kw: Any = {"answer": answer, "answer_found": True, "truncated": True, "length": 512,
                       "agree_prev": 1.0, "config": config}
            a0, a1, _ = answer.indices(arr.logprob.size)
            got = signals_kernel(arr.logprob, arr.top, np.exp(arr.top), a0, a1,
                                 config.group_window, config.tail, config.bottom_frac, 512.0,
                                 1.0, 1.0, 1.0)
            assert got.shape == (17,)
            want = reference_signals(arr, **kw)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(signals_from_arrays(arr, **kw), want, rtol=1e-12, atol=1e-12)


def test_kernel_entropy_for_peaks_whose_exp_underflows() -> None:
    """A token whose best logprob is below -300 (its exp loses precision): still the reference."""
    top = np.array([[-0.1, -2.0, -9.0], [-320.0, -321.5, -330.0], [-800.0, -800.5, -805.0]])
    arr = TokenArrays(top[:, 0].copy(), top, np.array([0, 1, 2, 3]), "abc")
    got, want = signals_from_arrays(arr), reference_signals(arr)
    assert np.isfinite(want[11]) and np.isfinite(want[12])  # entropy mean and max
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_kernel_declines_top_k_with_gaps() -> None:
    """A NaN among the alternatives: the kernel returns nothing and the reference answers."""
    from confroute.kernels import signals_kernel

    top = np.array([[-0.1, -2.0], [-0.2, np.nan]])
    assert signals_kernel(top[:, 0].copy(), top, np.exp(top), 0, 0, 4, 2, 0.1, 2.0, 0.0, 0.0,
                          0.5).size == 0
    arr = TokenArrays(top[:, 0].copy(), top, np.array([0, 1, 2]), "ab")
    np.testing.assert_array_equal(signals_from_arrays(arr), reference_signals(arr))


def test_ragged_topk_arrays() -> None:
    """Uneven alternatives (the reference path): sorted, NaN-padded, offsets over the kept text."""
    toks = [Token(" 1", -0.1, [TopLogprob(" 2", -3.0), TopLogprob(" 1", -0.1)]),
            Token(" 2", -0.2, [TopLogprob(" 2", -0.2)]), Token(" 3", -0.3, []),
            Token("<|im_end|>", -0.01, [TopLogprob("<|im_end|>", -0.01)])]
    arr = token_arrays(toks)
    np.testing.assert_array_equal(arr.top, [[-0.1, -3.0], [-0.2, np.nan], [np.nan, np.nan]])
    np.testing.assert_array_equal(arr.logprob, [-0.1, -0.2, -0.3])
    np.testing.assert_array_equal(arr.offsets, [0, 2, 4, 6])
    assert arr.text == " 1 2 3"


def _compact_and_objects(t: Trace) -> tuple[TokenArrays, TokenArrays]:
    lp = [x.logprob for x in t.tokens]
    top = [[a.logprob for a in x.top_logprobs] for x in t.tokens]
    return compact_arrays(lp, top, [x.token for x in t.tokens]), reference_token_arrays(t.tokens)


def test_compact_form_matches_objects(traces: list[Trace]) -> None:
    """Every real trace: the compact form (one numpy call for equal-width rows) gives the arrays
    the token objects give."""
    for t in traces:
        _same_arrays(*_compact_and_objects(t))


@pytest.mark.parametrize("case", ["unsorted", "masked", "special", "ragged", "no_alternatives"])
def test_compact_form_edge_cases_match_objects(case: str) -> None:
    """Rows out of order, masked alternatives (-9999, what servers write for -inf), special and
    dropped tokens, uneven rows and no alternatives: compact arrays equal the reference."""
    rows = {
        "unsorted": [("a", -0.2, [-1.5, -0.2, -3.0]), (" 1", -0.1, [-0.1, -2.5, -2.0])],
        "masked": [("a", -0.2, [-0.2, LOGPROB_FLOOR, -3.0]), ("b", LOGPROB_FLOOR, [-1.0, -2.0, -3.0]),
                   ("c", -0.5, [-0.5, -1.0, -9.0])],
        "special": [("<|im_start|>", -0.01, [-0.01, -5.0]), ("x", -0.3, [-0.3, -1.4]),
                    ("<b>", -0.2, [-0.2, -2.2]), ("</s>", -0.02, [-0.02, -4.0])],
        "ragged": [("a", -0.2, [-0.2, -1.0]), ("b", -0.1, [-0.1]), ("c", -0.4, [-0.4, -1.1, -3.0])],
        "no_alternatives": [("a", -0.2, []), ("b", -0.1, [])],
    }[case]
    t = [Token(tok, lp, [TopLogprob("?", a) for a in alts]) for tok, lp, alts in rows]
    got = compact_arrays([x.logprob for x in t], [[a.logprob for a in x.top_logprobs] for x in t],
                         [x.token for x in t])
    _same_arrays(got, reference_token_arrays(t))  # ragged rows: NaN-padded to the widest
    assert got.top.flags.c_contiguous


def test_end_to_end_signals_equal_extract_signals(traces: list[Trace]) -> None:
    """The whole per-answer computation of the engine equals features.extract_signals."""
    from confroute.engine import Engine, StageInput

    engine = Engine(Path("unused"), None, NumericGrader(), default_lambda=0.3)
    version: Any = type("V", (), {"config": FeatureConfig()})()
    for t in traces:
        st = StageInput(t.model, token_arrays(t.tokens), t.response, t.finish_reason,
                        t.usage.completion_tokens, previous=["12"])
        got, prediction = engine.signals(version, st)
        want = extract_signals(t, previous=["12"])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert prediction == t.prediction
