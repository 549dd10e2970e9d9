"""Concurrent service requests on the embedded backend decode together (real SmolLM2-135M)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from confroute.backends import GenParams, PromptTooLong
from confroute.backends.llamacpp import LlamaCppBackend
from confroute.traces import Message

pytestmark = pytest.mark.slow
Q = ["What is 7 times 6?", "Tom has 3 apples and buys 4 more. How many apples?",
     "A farmer has 12 cows and sells 5. How many are left?", "What is 100 minus 37?"]


def _msg(q: str) -> list[Message]:
    return [Message("user", q + " End with 'The answer is: N'.")]


@pytest.fixture()
def backend(smollm2_path: Path) -> LlamaCppBackend:
    b = LlamaCppBackend("smollm2-135m", str(smollm2_path), n_parallel=4, n_ctx_per_seq=512,
                        n_threads=1)
    yield b  # type: ignore[misc]
    b.close()


def test_concurrent_requests_share_one_batch_each_with_its_own_settings(
    backend: LlamaCppBackend,
) -> None:
    limits = [8, 16, 24, 32]
    ks = [1, 2, 5, 3]

    async def run() -> list:
        return await asyncio.gather(*(
            backend.acomplete(_msg(q), GenParams(max_tokens=n, temperature=0.0, top_logprobs=k))
            for q, n, k in zip(Q, limits, ks, strict=True)))

    out = asyncio.run(run())
    assert backend._batcher.max_active >= 2  # they were decoded together, not one by one
    for c, n, k in zip(out, limits, ks, strict=True):
        assert 0 < c.usage.completion_tokens <= n and c.tokens
        assert c.finish_reason in ("stop", "length")
        assert c.finish_reason == "stop" or c.usage.completion_tokens == n
        assert all(len(t.top_logprobs) == k for t in c.tokens)
        assert all(t.logprob <= 0 for t in c.tokens) and c.response


def test_a_cancelled_request_frees_its_slot_and_others_go_on(smollm2_path: Path) -> None:
    """One slot only: the short request can run only once the long one is dropped."""
    backend = LlamaCppBackend("smollm2-135m", str(smollm2_path), n_parallel=1,
                              n_ctx_per_seq=512, n_threads=1)

    # uncancelled, this prompt runs to max_tokens (SmolLM2 counts on for 121 tokens)
    count = [Message("user", "Count from 1 to 1000, one number per line.")]

    async def run() -> tuple[bool, int, object]:
        long = asyncio.create_task(backend.acomplete(
            count, GenParams(max_tokens=100, temperature=0.0, top_logprobs=2)))
        while backend._batcher is None or backend._batcher.generated < 3:
            assert not long.done(), long  # it is decoding, not failed
            await asyncio.sleep(0.01)
        long.cancel()  # the client went away (or its deadline passed)
        at_cancel = backend._batcher.generated
        short = await backend.acomplete(_msg(Q[0]), GenParams(max_tokens=8, top_logprobs=2))
        return long.cancelled(), backend._batcher.generated - at_cancel, short

    try:
        cancelled, after, short = asyncio.run(run())
        assert cancelled and short.usage.completion_tokens <= 8 and short.tokens
        # after the cancel: at most a step of the long one, then the short one's own tokens
        assert after <= 2 + short.usage.completion_tokens, after
    finally:
        backend.close()


def test_generation_takes_the_context_after_service_requests(backend: LlamaCppBackend) -> None:
    asyncio.run(backend.acomplete(_msg(Q[0]), GenParams(max_tokens=8)))
    done = list(backend.complete_many([_msg(Q[1])], GenParams(max_tokens=8, top_logprobs=2)))
    assert len(done) == 1 and done[0][1].tokens


def test_a_prompt_too_long_fails_only_its_own_request(backend: LlamaCppBackend) -> None:
    async def run() -> list:
        return await asyncio.gather(
            backend.acomplete(_msg("seven " * 600), GenParams(max_tokens=8)),
            backend.acomplete(_msg(Q[0]), GenParams(max_tokens=8)),
            return_exceptions=True)

    bad, good = asyncio.run(run())
    assert isinstance(bad, PromptTooLong) and "n_ctx_per_seq" in str(bad)
    assert not isinstance(good, BaseException) and good.tokens
