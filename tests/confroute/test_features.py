"""Confidence signals against values computed by hand on small traces; properties on random ones."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confroute.features import (
    FEATURE_NAMES,
    FeatureConfig,
    answer_token_slice,
    extract_signals,
    is_special,
    signals_from_arrays,
    token_arrays,
)
from confroute.grading import get_grader
from confroute.traces import LOGPROB_FLOOR, Token, TopLogprob, Trace, Usage, read_traces

FIXTURES = Path(__file__).parent / "fixtures"
IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}
LOGPROB_SIGNALS = [n for n in FEATURE_NAMES if n not in ("has_logprobs", "length", "truncated",
                                                          "answer_found", "agree_prev")]

pytestmark = pytest.mark.filterwarnings("error")  # a NaN must be explicit, never a RuntimeWarning


def tok(text: str, lp: float, *top: float) -> Token:
    """A token; alternatives named after their rank (their text does not enter any signal)."""
    return Token(text, lp, [TopLogprob(f"alt{j}", v) for j, v in enumerate(top)])


def trace(tokens: list[Token], response: str | None = None, **kw: object) -> Trace:
    text = "".join(t.token for t in tokens) if response is None else response
    return Trace(item_id="x/0", model="m", response=text, tokens=tokens, **kw)  # type: ignore[arg-type]


def sig(values: np.ndarray) -> dict[str, float]:
    assert values.shape == (len(FEATURE_NAMES),)
    return {name: float(values[i]) for name, i in IDX.items()}


def entropy(*logps: float) -> float:
    """Entropy (nats) of the renormalised distribution, written out for a handful of values."""
    ps = [math.exp(v) for v in logps]
    total = sum(ps)
    return -sum(p / total * math.log(p / total) for p in ps)


# --- trace A: 3 kept tokens, k = 2, a chosen token below top-1, and a stop token ------------------
A_TOKENS = [
    tok(" 1", -0.1, -0.1, -2.5),  # C = (0.1 + 2.5) / 2 = 1.3,  margin 2.4
    tok("8", -0.5, -0.5, -1.0),  # C = 0.75, margin 0.5
    tok(" apples", -1.2, -0.3, -1.2),  # sampled below the top: C = 0.75, margin 0.9
    tok("<|im_end|>", -0.01, -0.01, -5.0),  # a stop token: in no signal
]
A_CFG = FeatureConfig(group_window=2, tail=2, bottom_frac=0.1)


def test_trace_a_by_hand() -> None:
    t = trace(A_TOKENS, " 18 apples", finish_reason="length", usage=Usage(30, 4))
    s = sig(extract_signals(t, previous=["18", "17.0", None], config=A_CFG))
    assert s["has_logprobs"] == 1
    assert s["avg_logprob"] == pytest.approx((-0.1 - 0.5 - 1.2) / 3)
    assert s["min_logprob"] == pytest.approx(-1.2)
    assert s["avg_confidence"] == pytest.approx((1.3 + 0.75 + 0.75) / 3)
    assert s["margin"] == pytest.approx((2.4 + 0.5 + 0.9) / 3)
    # groups of 2: (1.3 + 0.75) / 2 = 1.025 and 0.75; the lowest 10% of 2 groups is 1 group
    assert s["lowest_group"] == pytest.approx(0.75)
    assert s["bottom10_group"] == pytest.approx(0.75)
    assert s["tail_confidence"] == pytest.approx(0.75)
    # the answer "18" spans tokens " 1" and "8"
    assert s["answer_logprob"] == pytest.approx(-0.3)
    assert s["answer_min_logprob"] == pytest.approx(-0.5)
    assert s["answer_confidence"] == pytest.approx((1.3 + 0.75) / 2)
    ents = [entropy(-0.1, -2.5), entropy(-0.5, -1.0), entropy(-0.3, -1.2)]
    assert s["entropy_mean"] == pytest.approx(sum(ents) / 3)
    assert s["entropy_max"] == pytest.approx(max(ents))
    assert s["length"] == 4  # completion tokens as reported, the stop token included
    assert s["truncated"] == 1
    assert s["answer_found"] == 1
    assert s["agree_prev"] == pytest.approx(1 / 3)  # "18" agrees; "17.0" and no answer do not


# --- trace B: 6 tokens, k = 3, some with fewer alternatives than asked ----------------------------
B_TOKENS = [
    tok("The", -0.3, -0.3, -1.5, -3.0),  # C = 1.6, margin 1.2
    tok(" answer", -0.1, -0.1, -2.9, -3.0),  # C = 2.0, margin 2.8
    tok(" is", -0.9, -0.6, -0.9),  # two alternatives: C = 0.75, margin 0.3
    tok(" 7", -2.0, -2.0),  # one alternative: C = 2.0, no margin, entropy 0
    tok(".", -0.05),  # no alternatives: only in the logprob signals
    tok("\n", -0.2, -0.2, -0.4, -3.0),  # C = 1.2, margin 0.2
]
B_CFG = FeatureConfig(group_window=3, tail=2, bottom_frac=0.5)


def test_trace_b_by_hand() -> None:
    s = sig(extract_signals(trace(B_TOKENS), config=B_CFG))
    assert s["avg_logprob"] == pytest.approx(-3.55 / 6)
    assert s["min_logprob"] == pytest.approx(-2.0)
    # C over the tokens that have alternatives: the mean is over the k_i returned
    assert s["avg_confidence"] == pytest.approx((1.6 + 2.0 + 0.75 + 2.0 + 1.2) / 5)
    assert s["margin"] == pytest.approx((1.2 + 2.8 + 0.3 + 0.2) / 4)
    # windows of 3 over C = [1.6, 2.0, 0.75, 2.0, 1.2]: 1.45, 1.5833, 1.3167
    groups = [(1.6 + 2.0 + 0.75) / 3, (2.0 + 0.75 + 2.0) / 3, (0.75 + 2.0 + 1.2) / 3]
    assert s["lowest_group"] == pytest.approx(min(groups))
    assert s["bottom10_group"] == pytest.approx((groups[2] + groups[0]) / 2)  # lowest 50%: 2 of 3
    assert s["tail_confidence"] == pytest.approx((2.0 + 1.2) / 2)
    assert s["answer_logprob"] == s["answer_min_logprob"] == pytest.approx(-2.0)
    assert s["answer_confidence"] == pytest.approx(2.0)
    ents = [entropy(-0.3, -1.5, -3.0), entropy(-0.1, -2.9, -3.0), entropy(-0.6, -0.9), 0.0,
            entropy(-0.2, -0.4, -3.0)]
    assert s["entropy_mean"] == pytest.approx(sum(ents) / 5)
    assert s["entropy_max"] == pytest.approx(max(ents))
    assert s["length"] == 6  # no usage reported: the kept tokens are counted
    assert s["truncated"] == 0
    assert np.isnan(s["agree_prev"])  # the first model has nobody to agree with


def test_fewer_tokens_than_window_make_one_group() -> None:
    s = sig(extract_signals(trace(B_TOKENS[:2])))  # default window 16 > 2 tokens
    assert s["lowest_group"] == s["bottom10_group"] == pytest.approx((1.6 + 2.0) / 2)
    assert s["tail_confidence"] == pytest.approx((1.6 + 2.0) / 2)


def test_no_logprobs_is_explicit() -> None:
    """A server that returned no logprobs: has_logprobs 0, every logprob signal NaN, no warning."""
    t = trace([], "Reasoning... The answer is: 12", usage=Usage(40, 31), finish_reason="stop")
    s = sig(extract_signals(t, previous=["12"]))
    assert s["has_logprobs"] == 0
    assert all(np.isnan(s[n]) for n in LOGPROB_SIGNALS)
    assert s["length"] == 31
    assert s["truncated"] == 0
    assert s["answer_found"] == 1  # read from the response text
    assert s["agree_prev"] == 1


def test_tokens_without_any_alternatives() -> None:
    s = sig(extract_signals(trace([tok("4", -0.2), tok("2", -0.4)])))
    assert s["has_logprobs"] == 1
    assert s["avg_logprob"] == pytest.approx(-0.3)
    confidence = ["avg_confidence", "margin", "bottom10_group", "lowest_group", "tail_confidence",
                  "answer_confidence", "entropy_mean", "entropy_max"]
    assert all(np.isnan(s[n]) for n in confidence)
    assert s["answer_logprob"] == pytest.approx(-0.3)  # "42" spans both tokens


@pytest.mark.parametrize("special", ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>",
                                     "<｜end▁of▁sentence｜>", "<end_of_turn>", "<eos>"])
def test_special_tokens_are_filtered(special: str) -> None:
    assert is_special(special)
    with_special = trace([tok("5", -0.5, -0.5, -1.0), tok(special, -3.0, -0.1, -3.0)])
    without = trace([tok("5", -0.5, -0.5, -1.0)])
    a, b = extract_signals(with_special), extract_signals(without)
    np.testing.assert_array_equal(np.delete(a, IDX["length"]), np.delete(b, IDX["length"]))


@pytest.mark.parametrize("text", ["<", "|", "<|", "<b>", " <|im_end|>", "im_end", "</div>"])
def test_ordinary_text_is_not_special(text: str) -> None:
    assert not is_special(text)


@pytest.mark.parametrize("bad", [float("-inf"), float("nan"), LOGPROB_FLOOR, -3.4e38])
def test_missing_logprobs_are_left_out(bad: float) -> None:
    """-inf (a masked token), NaN, vLLM's -9999 floor, llama.cpp's lowest float: no information."""
    clean = trace([tok("1", -0.1, -0.1, -2.0), tok("2", -0.3, -0.3, -1.0)], "12")
    dirty = trace(
        [tok("1", -0.1, -0.1, -2.0, bad), tok("x", bad, -0.2, -0.5), tok("2", -0.3, -0.3, -1.0)],
        "1x2",
    )
    a, b = sig(extract_signals(clean)), sig(extract_signals(dirty))
    for name in ("avg_logprob", "min_logprob", "avg_confidence", "margin", "entropy_max"):
        assert a[name] == pytest.approx(b[name]), name


def test_round_trip_keeps_signals(tmp_path: Path) -> None:
    """A -inf written as the floor by the trace writer gives the same signals when read back."""
    from confroute.traces import write_traces

    t = trace([tok("1", -0.1, -0.1, float("-inf")), tok("2", float("-inf"), -0.3)], "12")
    write_traces(tmp_path / "t.jsonl", [t])
    back = read_traces(tmp_path / "t.jsonl")[0]
    np.testing.assert_array_equal(extract_signals(t), extract_signals(back))


def test_answer_not_found() -> None:
    s = sig(extract_signals(trace([tok("No", -0.1, -0.1), tok(" idea", -0.2, -0.2)])))
    assert s["answer_found"] == 0
    assert np.isnan(s["answer_logprob"]) and np.isnan(s["answer_confidence"])


def test_agree_prev_without_own_answer_is_zero() -> None:
    s = sig(extract_signals(trace([tok("No", -0.1)]), previous=["4"]))
    assert s["agree_prev"] == 0


def test_agree_prev_uses_stored_prediction() -> None:
    t = trace([tok("7", -0.1)], prediction="8")
    assert sig(extract_signals(t, previous=["8", "8.0"]))["agree_prev"] == 1


@pytest.mark.parametrize(
    ("span", "expected"),
    [((0, 2), slice(0, 1)), ((2, 5), slice(1, 2)), ((1, 6), slice(0, 3)), ((5, 6), slice(2, 3)),
     (None, None), ((9, 12), None)],
)
def test_answer_token_slice(span: tuple[int, int] | None, expected: slice | None) -> None:
    arr = token_arrays([tok("ab", -0.1), tok("cde", -0.1), tok("f", -0.1)])  # offsets 0, 2, 5, 6
    assert answer_token_slice(arr, span) == expected


def test_token_arrays_shapes_and_order() -> None:
    arr = token_arrays([Token("a", -1.0, [TopLogprob("b", -2.0), TopLogprob("a", -1.0)]),
                        tok("<|im_end|>", -0.1), tok("c", -0.5, -0.5)])
    assert arr.text == "ac"
    np.testing.assert_array_equal(arr.offsets, [0, 1, 2])
    np.testing.assert_array_equal(arr.logprob, [-1.0, -0.5])
    np.testing.assert_array_equal(arr.top, [[-1.0, -2.0], [-0.5, np.nan]])  # sorted, NaN-padded


def test_hot_path_matches_extract_signals() -> None:
    t = trace(A_TOKENS, " 18 apples", finish_reason="length", usage=Usage(30, 4))
    arr = token_arrays(t.tokens)
    ext = get_grader("numeric").extract(arr.text)
    assert ext is not None
    fast = signals_from_arrays(arr, answer=answer_token_slice(arr, (ext.start, ext.end)),
                               answer_found=True, truncated=True, length=4, agree_prev=0.5,
                               config=A_CFG)
    slow = extract_signals(t, previous=["18", "17"], config=A_CFG)
    np.testing.assert_array_equal(fast, slow)


def test_feature_names() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_NAMES[0] == "has_logprobs"
    assert {"avg_logprob", "avg_confidence", "margin", "bottom10_group", "lowest_group",
            "tail_confidence", "entropy_mean", "entropy_max", "length", "truncated",
            "agree_prev"} <= set(FEATURE_NAMES)


def test_real_traces() -> None:
    """Real reference traces: every signal finite except agree_prev, answers located in tokens."""
    for t in read_traces(FIXTURES / "traces_sample.jsonl"):
        s = sig(extract_signals(t))
        assert all(np.isfinite(v) for n, v in s.items() if n != "agree_prev"), t.item_id
        assert s["min_logprob"] <= s["avg_logprob"] < 0
        assert s["lowest_group"] <= s["bottom10_group"]
        assert 0 <= s["entropy_mean"] <= s["entropy_max"] <= math.log(5) + 1e-9
        assert s["length"] == t.usage.completion_tokens == len(t.tokens)


# --- properties on random traces ------------------------------------------------------------------
_logprob = st.one_of(
    st.floats(min_value=-30, max_value=0),
    st.sampled_from([float("-inf"), float("nan"), LOGPROB_FLOOR, 0.0, 1e-7]),
)
_text = st.one_of(st.sampled_from(["<|im_end|>", "<|endoftext|>", "</s>", " 18", "."]),
                  st.text(max_size=4))
_token = st.builds(
    Token,
    _text,
    _logprob,
    st.lists(st.builds(TopLogprob, st.text(max_size=2), _logprob), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(_token, max_size=40),
    previous=st.lists(st.one_of(st.none(), st.sampled_from(["18", "1", "-2"])), max_size=3),
    window=st.integers(1, 20),
    tail=st.integers(1, 20),
    frac=st.floats(0.01, 1.0),
    finish=st.sampled_from(["stop", "length"]),
)
def test_random_traces_never_crash(
    tokens: list[Token], previous: list[str | None], window: int, tail: int, frac: float,
    finish: str,
) -> None:
    cfg = FeatureConfig(group_window=window, tail=tail, bottom_frac=frac)
    t = trace(tokens, finish_reason=finish)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sig(extract_signals(t, previous=previous, config=cfg))
    assert s["has_logprobs"] in (0, 1)
    if s["has_logprobs"] == 0:
        assert all(np.isnan(s[n]) for n in LOGPROB_SIGNALS)
    else:
        assert s["min_logprob"] <= s["avg_logprob"] + 1e-12
    if not np.isnan(s["lowest_group"]):
        assert s["lowest_group"] <= s["bottom10_group"] + 1e-9
    if not np.isnan(s["entropy_max"]):
        assert -1e-12 <= s["entropy_mean"] <= s["entropy_max"] + 1e-12 <= math.log(5) + 1e-9
    assert s["truncated"] == (finish == "length")
    assert np.isnan(s["agree_prev"]) == (not previous)
