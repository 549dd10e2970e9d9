"""Embedded llama.cpp backend on the real SmolLM2-135M GGUF: traces valid, batching faithful."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from confroute.backends import BackendError, Completion, GenParams, make_backend
from confroute.backends.llamacpp import LlamaCppBackend, top_k_logprobs
from confroute.traces import Message

TEMPLATE = (
    "Solve this math problem. Reason briefly, then end with the line 'The answer is: N' "
    "where N is a number.\n\n{question}"
)
QUESTIONS = [
    "A pet store had 13 siamese cats and 5 house cats. During a sale they sold 10 cats. "
    "How many cats do they have left?",
    "Luke bought 2 games from a friend and bought 2 more at a garage sale. If 2 of the games "
    "didn't work, how many good games did he end up with?",
    "Carol and her mom were picking carrots from their garden. Carol picked 29 and her mother "
    "picked 16. If only 38 of the carrots were good, how many bad carrots did they have?",
    "What is 7 times 6?",
]
PARAMS = GenParams(max_tokens=48, temperature=0.0, top_logprobs=5)


def _prompt(question: str) -> list[Message]:
    return [Message("user", TEMPLATE.format(question=question))]


@pytest.fixture(scope="module")
def backend(smollm2_path: Path) -> LlamaCppBackend:
    # one thread: on a busy 2-core machine a second llama.cpp thread spins more than it helps
    b = LlamaCppBackend(
        "smollm2-135m", str(smollm2_path), n_parallel=2, n_ctx_per_seq=512, n_threads=1
    )
    yield b  # type: ignore[misc]
    b.close()


@pytest.fixture(scope="module")
def batched(backend: LlamaCppBackend) -> dict[int, Completion]:
    """All prompts through 2 parallel slots: a finished slot takes the next prompt."""
    out: dict[int, Completion] = {}
    for index, completion in backend.complete_many([_prompt(q) for q in QUESTIONS], PARAMS):
        assert index not in out
        out[index] = completion
    return out


@pytest.mark.slow
def test_every_prompt_answered_once(batched: dict[int, Completion]) -> None:
    assert sorted(batched) == list(range(len(QUESTIONS)))


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(QUESTIONS)))
def test_trace_is_valid(batched: dict[int, Completion], backend: LlamaCppBackend, i: int) -> None:
    c = batched[i]
    assert c.tokens, "no tokens generated"
    assert c.finish_reason in {"stop", "length"}
    assert len(c.tokens) == c.usage.completion_tokens <= PARAMS.max_tokens
    if c.finish_reason == "length":
        assert len(c.tokens) == PARAMS.max_tokens
    assert c.usage.prompt_tokens == len(backend.prompt_tokens(_prompt(QUESTIONS[i])))
    assert c.model == "smollm2-135m" and c.latency_s > 0
    assert "".join(t.token for t in c.tokens) == c.response
    for t in c.tokens:
        assert math.isfinite(t.logprob) and t.logprob <= 1e-6  # float32 logits: a hair above 0
        alts = [a.logprob for a in t.top_logprobs]
        assert len(alts) == PARAMS.top_logprobs
        assert alts == sorted(alts, reverse=True)
        assert all(math.isfinite(v) and v <= 1e-6 for v in alts)
        # greedy: the chosen token is the top alternative, with the same logprob
        assert (t.token, t.logprob) == (t.top_logprobs[0].token, alts[0])
        assert sum(math.exp(v) for v in alts) <= 1 + 1e-5  # a part of one distribution


@pytest.mark.slow
def test_batched_close_to_single_stream(
    batched: dict[int, Completion], backend: LlamaCppBackend
) -> None:
    """Batched greedy decoding follows single-stream decoding.

    Not bit for bit: llama.cpp multiplies a 1-row batch by another kernel than a many-row one, and
    the 4-bit SmolLM2 turns those rounding differences into up to ~0.2 nats, so a near tie can
    send a greedy answer another way after a while. Measured on 8 MultiArith prompts x 64 tokens:
    1 of 8 texts differed with 2 slots, 3 with 4, 6 with 8.
    """
    same_text = 0
    for i, prompt in enumerate(QUESTIONS):
        [(_, single)] = list(backend.complete_many([_prompt(prompt)], PARAMS))
        a, b = single.tokens, batched[i].tokens
        assert a[0].token == b[0].token and abs(a[0].logprob - b[0].logprob) < 0.3
        common = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x.token != y.token),
                      min(len(a), len(b)))
        assert np.mean([abs(a[j].logprob - b[j].logprob) for j in range(common)]) < 0.1
        same_text += single.response == batched[i].response
    assert same_text >= len(QUESTIONS) // 2


@pytest.mark.slow
def test_identical_prompts_in_one_batch_agree(backend: LlamaCppBackend) -> None:
    """Each sequence must see only its own tokens: the same prompt gives the same trace."""
    prompt = _prompt(QUESTIONS[2])
    out = dict(backend.complete_many([prompt, prompt], PARAMS))
    assert out[0].tokens == out[1].tokens


@pytest.mark.slow
def test_async_single_call(batched: dict[int, Completion], backend: LlamaCppBackend) -> None:
    c = asyncio.run(backend.acomplete(_prompt(QUESTIONS[3]), PARAMS))
    assert c.response == batched[3].response


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_backend_error(smollm2_path: Path) -> None:
    b = make_backend("tiny", {"backend": "llamacpp", "model": str(smollm2_path),
                              "n_parallel": 1, "n_ctx_per_seq": 128})
    try:
        with pytest.raises(BackendError, match=r"tiny: prompt 0 has .* tokens.*n_ctx_per_seq 128"):
            list(b.complete_many([_prompt("word " * 200)], PARAMS))
    finally:
        b.close()


# --- top-k extraction from logits, against a direct log-softmax ---------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max(axis=1, keepdims=True) + np.log(np.exp(x - x.max(axis=1, keepdims=True))
                                                       .sum(axis=1, keepdims=True)))


LOGITS = np.array(
    [[1.0, 3.0, -2.0, 0.5, 3.5, 0.0],
     [10.0, -10.0, 9.0, 9.5, 0.0, 8.0],
     [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]],
    dtype=np.float32,
)


def test_top_k_logprobs_greedy() -> None:
    chosen, chosen_lp, top_ids, top_lp = top_k_logprobs(LOGITS, 3, 0.0, np.random.default_rng(0))
    ref = _log_softmax(LOGITS)
    np.testing.assert_array_equal(top_ids[:2], [[4, 1, 0], [0, 3, 2]])
    assert top_ids[2, 0] == 5 and set(top_ids[2, 1:]) <= {0, 1, 2, 3, 4}  # ties in any order
    np.testing.assert_allclose(top_lp, np.take_along_axis(ref, top_ids, axis=1), atol=1e-6)
    np.testing.assert_array_equal(chosen, [4, 0, 5])
    np.testing.assert_allclose(chosen_lp, ref[[0, 1, 2], [4, 0, 5]], atol=1e-6)
    # row 0 by hand: log(e^3.5 / (e^1 + e^3 + e^-2 + e^0.5 + e^3.5 + e^0))
    z = sum(math.exp(v) for v in (1.0, 3.0, -2.0, 0.5, 3.5, 0.0))
    assert chosen_lp[0] == pytest.approx(3.5 - math.log(z), abs=1e-6)


def test_top_k_logprobs_k_larger_than_vocab() -> None:
    _, _, top_ids, top_lp = top_k_logprobs(LOGITS[:, :4], 10, 0.0, np.random.default_rng(0))
    assert top_ids.shape == (3, 4)
    np.testing.assert_allclose(np.exp(top_lp).sum(axis=1), 1.0, atol=1e-6)


def test_top_k_logprobs_sampling_is_seeded_and_reports_untempered_logprobs() -> None:
    a = top_k_logprobs(LOGITS, 2, 1.5, np.random.default_rng(7))
    b = top_k_logprobs(LOGITS, 2, 1.5, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    ref = _log_softmax(LOGITS)
    np.testing.assert_allclose(a[1], ref[np.arange(3), a[0]], atol=1e-6)  # not the tempered one
    draws = [top_k_logprobs(LOGITS[2:], 1, 1.0, np.random.default_rng(s))[0][0] for s in range(60)]
    assert len(set(draws)) > 1  # row 2 is nearly flat: sampling must not always pick the top
