"""The fast token arrays and the compiled signal kernel give what the reference definitions give."""

from __future__ import annotations

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


def _noisy_tokens(rng: np.random.Generator, n: int, k: int) -> list[Token]:
    out = []
    for i in range(n):
        alts = sorted(rng.uniform(-12, 0, k), reverse=True)
        text = rng.choice([" 18", " apples", "<|im_end|>", " =", "</s>", " The answer is: 7"])
        lp = float(alts[0]) if i % 17 else LOGPROB_FLOOR  # some masked chosen tokens
        tops = [TopLogprob(f"t{j}", float(v)) for j, v in enumerate(rng.permutation(alts))]
        if i % 23 == 0:
            tops[-1] = TopLogprob("masked", LOGPROB_FLOOR)  # a masked alternative
        out.append(Token(str(text), lp, tops))
    return out


@pytest.mark.parametrize(("n", "k"), [(300, 5), (40, 2), (7, 1), (1, 5)])
def test_specials_masks_and_shapes_match_features(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 10 + k)
    toks = _noisy_tokens(rng, n, k)
    fast, ref = token_arrays(toks), reference_token_arrays(toks)
    _same_arrays(fast, ref)
    np.testing.assert_allclose(_signals(fast, FeatureConfig(), True),
                               _signals(ref, FeatureConfig(), False), rtol=1e-12, atol=1e-12)


def test_ragged_topk_falls_back_to_features() -> None:
    toks = [Token(" 1", -0.1, [TopLogprob(" 1", -0.1), TopLogprob(" 2", -3.0)]),
            Token(" 2", -0.2, [TopLogprob(" 2", -0.2)]), Token(" 3", -0.3, [])]
    _same_arrays(token_arrays(toks), reference_token_arrays(toks))


def test_compact_form_matches_objects(traces: list[Trace]) -> None:
    t = traces[1]
    lp = [x.logprob for x in t.tokens]
    top = [[a.logprob for a in x.top_logprobs] for x in t.tokens]
    arr = compact_arrays(lp, top, [x.token for x in t.tokens])
    _same_arrays(arr, reference_token_arrays(t.tokens))


def test_end_to_end_signals_equal_extract_signals(traces: list[Trace]) -> None:
    """The whole per-answer computation of the engine equals features.extract_signals."""
    from confroute.service.engine import Engine, StageInput

    engine = Engine.__new__(Engine)
    engine.grader = NumericGrader()
    version: Any = type("V", (), {"config": FeatureConfig()})()
    for t in traces:
        st = StageInput(t.model, token_arrays(t.tokens), t.response, t.finish_reason,
                        t.usage.completion_tokens, previous=["12"])
        got, prediction = engine.signals(version, st)
        want = extract_signals(t, previous=["12"])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert prediction == t.prediction
