"""OpenAICompatBackend against a real llama.cpp server, and a scripted stub for failure modes.

The happy path runs SmolLM2 behind `python -m llama_cpp.server` on loopback. The stub (a tiny
ASGI app under uvicorn) only plays what a healthy server will not: 4xx/429/5xx replies, slowness,
replies without logprobs or with bad JSON, and counting requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from confroute.backends import BackendError, GenParams, make_backend
from confroute.backends.openai_compat import OpenAICompatBackend, completion_from_reply
from confroute.panel import panel_model
from confroute.traces import Message

K = 3
PARAMS = GenParams(max_tokens=16, temperature=0.0, top_logprobs=K)
QUESTION = [Message("user", "Tom has 3 apples and buys 4 more. How many apples does he have?")]
CHAT_REPLY: dict[str, Any] = {
    "choices": [
        {
            "message": {"role": "assistant", "content": "7"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
}


# -- the scripted stub server ------------------------------------------------------------------


@dataclass
class Stub:
    """An OpenAI-shaped ASGI app whose replies, delays and bookkeeping the tests script."""

    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    delays: list[float] = field(default_factory=list)  # per arriving request, then `delay_s`
    delay_s: float = 0.0
    reply: bytes = json.dumps(CHAT_REPLY).encode()
    calls: int = 0
    in_flight: int = 0
    peak: int = 0
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, json.loads(body or b"{}")))
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delays.pop(0) if self.delays else self.delay_s)
        finally:
            self.in_flight -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        out = self.reply if status == 200 else b'{"error": {"message": "scripted failure"}}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": out})


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    """The stub served by uvicorn on a free loopback port; yields (stub, base_url)."""
    app = Stub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="error", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


def _backend(base_url: str, **kw: Any) -> OpenAICompatBackend:
    opts: dict[str, Any] = {"timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.05, **kw}
    return OpenAICompatBackend("stubbed", "stub-model", base_url, **opts)


def _check_tokens(completion: Any, k: int) -> None:
    """Real logprobs: k alternatives each, best first, logprobs <= 0, tokens spell the text."""
    assert completion.tokens, "the server returned no logprobs"
    assert "".join(t.token for t in completion.tokens) == completion.response
    assert completion.usage.completion_tokens == len(completion.tokens)
    for tok in completion.tokens:
        assert tok.logprob <= 0
        values = [alt.logprob for alt in tok.top_logprobs]
        assert len(values) == k
        assert values == sorted(values, reverse=True)


# -- the real llama.cpp server -----------------------------------------------------------------


@pytest.mark.slow
def test_chat_mode_returns_top_k_logprobs_from_llama_server(llama_server: str) -> None:
    backend = OpenAICompatBackend("smol", "smollm2", llama_server, timeout_s=60)
    completion = next(backend.complete_many([QUESTION], PARAMS))[1]
    _check_tokens(completion, K)
    assert completion.model == "smol"
    assert completion.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 10
    assert completion.latency_s > 0


@pytest.mark.slow
def test_completions_mode_converts_the_legacy_layout(llama_server: str) -> None:
    backend = OpenAICompatBackend("smol", "smollm2", llama_server, mode="completions")
    prompt = [Message("user", "Question: what is 2 + 3?\nAnswer:")]
    completion = next(backend.complete_many([prompt], GenParams(12, 0.0, 4)))[1]
    _check_tokens(completion, 4)
    assert completion.usage.prompt_tokens > 5


@pytest.mark.slow
def test_complete_many_and_acomplete_against_llama_server(llama_server: str) -> None:
    fields = {"name": "smol", "backend": "openai", "model": "smollm2", "base_url": llama_server}
    backend = make_backend("smol", panel_model(fields).spec())
    prompts = [[Message("user", f"What is {i} + {i}?")] for i in range(3)]
    params = GenParams(max_tokens=8, top_logprobs=2)
    results = dict(backend.complete_many(prompts, params))
    assert sorted(results) == [0, 1, 2]
    single = asyncio.run(backend.acomplete(prompts[0], params))
    assert single.response == results[0].response  # greedy: the same answer either way
    assert [t.token for t in single.tokens] == [t.token for t in results[0].tokens]


# -- spec handling -----------------------------------------------------------------------------


def test_from_spec_reads_panel_fields_and_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFROUTE_TEST_KEY", "sekrit")
    fields = {
        "name": "m",
        "backend": "openai",
        "model": "served",
        "base_url": "http://h:1/v1/",
        "api_key_env": "CONFROUTE_TEST_KEY",
        "timeout_s": 7,
        "max_retries": 4,
        "max_concurrency": 3,
    }
    spec = panel_model(fields).spec()
    backend = OpenAICompatBackend.from_spec("m", {**spec, "mode": "completions"})
    assert (backend.model, backend.api_key, backend.timeout_s) == ("served", "sekrit", 7)
    assert (backend.max_retries, backend.max_concurrency) == (4, 3)
    assert backend.url == "http://h:1/v1/completions"
    assert OpenAICompatBackend.from_spec("m", spec).url == "http://h:1/v1/chat/completions"


def test_bad_specs_are_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFROUTE_NO_SUCH_KEY", raising=False)
    with pytest.raises(BackendError, match="CONFROUTE_NO_SUCH_KEY"):
        OpenAICompatBackend.from_spec(
            "m", {"base_url": "http://h/v1", "api_key_env": "CONFROUTE_NO_SUCH_KEY"}
        )
    with pytest.raises(ValueError, match="needs base_url"):
        OpenAICompatBackend.from_spec("m", {"model": "x"})
    with pytest.raises(ValueError, match="mode"):
        OpenAICompatBackend.from_spec("m", {"base_url": "http://h/v1", "mode": "edits"})
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatBackend("m", "x", "localhost:8000")


# -- failure modes (stub) ----------------------------------------------------------------------


def test_down_server_fails_after_retries_with_backoff() -> None:
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    backend = _backend(url, timeout_s=1.0, max_retries=2, backoff_s=0.1)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as err:
        list(backend.complete_many([QUESTION], PARAMS))
    assert time.perf_counter() - t0 >= 0.3  # waited 0.1 s, then 0.2 s between the attempts
    message = str(err.value)
    assert "stubbed" in message and f"{url}/chat/completions" in message
    assert "3 attempts" in message and "cannot connect" in message


def test_slow_server_times_out_within_timeout_s_for_all_attempts(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.delay_s = 3.0
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"2 attempts: timed out after 0\.1\d* s"):
        asyncio.run(_backend(url, timeout_s=0.3, max_retries=1, backoff_s=0.01)
                    .acomplete(QUESTION, PARAMS))
    assert time.perf_counter() - t0 < 1.0  # 0.3 s for both attempts, not 0.3 s each
    assert app.calls == 2


def test_a_first_attempt_that_hangs_is_retried_within_timeout_s(stub: tuple[Stub, str]) -> None:
    """Each attempt gets timeout_s / (max_retries + 1): the hung first one is cut at ~0.33 s and
    the second answers, all inside the call's 1 s (before, the first took the whole 1 s)."""
    app, url = stub
    app.delays = [5.0]
    t0 = time.perf_counter()
    c = asyncio.run(_backend(url, timeout_s=1.0, max_retries=2, backoff_s=0.05)
                    .acomplete(QUESTION, PARAMS))
    took = time.perf_counter() - t0
    assert c.response == "7" and app.calls == 2
    assert 0.3 <= took < 1.0


def test_no_retry_starts_past_the_callers_deadline(stub: tuple[Stub, str]) -> None:
    """The caller's deadline (the runner's: the request's own limit) bounds the attempts too; a
    backoff that would end past it is not waited out."""
    app, url = stub
    app.delay_s = 5.0
    t0 = time.perf_counter()
    backend = _backend(url, timeout_s=10.0, max_retries=3, backoff_s=0.5)
    with pytest.raises(BackendError, match=r"1 attempt: timed out .*no time left for a retry"):
        asyncio.run(backend.acomplete(QUESTION, PARAMS, time.monotonic() + 0.4))
    assert time.perf_counter() - t0 < 1.5 and app.calls == 1


@pytest.mark.parametrize("statuses", [[503, 502], [429], [500, 429]])
def test_429_and_5xx_are_retried(stub: tuple[Stub, str], statuses: list[int]) -> None:
    app, url = stub
    app.statuses = list(statuses)
    completion = asyncio.run(_backend(url).acomplete(QUESTION, PARAMS))
    assert completion.response == "7"
    assert app.calls == len(statuses) + 1


def test_retries_run_out_on_persistent_5xx(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.statuses = [500] * 5
    with pytest.raises(BackendError, match=r"3 attempts: HTTP 500: .*scripted failure"):
        asyncio.run(_backend(url).acomplete(QUESTION, PARAMS))
    assert app.calls == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_4xx_is_not_retried(stub: tuple[Stub, str], status: int) -> None:
    app, url = stub
    app.statuses = [status]
    with pytest.raises(BackendError, match=rf"after 1 attempt: HTTP {status}: .*scripted failure"):
        asyncio.run(_backend(url, max_retries=3).acomplete(QUESTION, PARAMS))
    assert app.calls == 1


def test_complete_many_respects_max_concurrency(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.delay_s = 0.15
    results = dict(_backend(url, max_concurrency=3).complete_many([QUESTION] * 9, PARAMS))
    assert sorted(results) == list(range(9))
    assert app.peak == 3


def test_acomplete_respects_max_concurrency(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.delay_s = 0.15
    backend = _backend(url, max_concurrency=2)

    async def burst() -> None:
        await asyncio.gather(*(backend.acomplete(QUESTION, PARAMS) for _ in range(6)))
        await backend.aclose()

    asyncio.run(burst())
    asyncio.run(burst())  # a second event loop gets its own client and bound
    assert app.peak == 2 and app.calls == 12


def test_complete_many_works_inside_a_running_event_loop(stub: tuple[Stub, str]) -> None:
    _, url = stub

    async def caller() -> list[int]:
        return sorted(i for i, _ in _backend(url).complete_many([QUESTION] * 3, PARAMS))

    assert asyncio.run(caller()) == [0, 1, 2]


def test_stopping_early_cancels_requests_in_flight(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.delays = [0.05]
    app.delay_s = 3.0
    results = _backend(url).complete_many([QUESTION] * 4, PARAMS)
    assert isinstance(results, Generator)
    next(results)
    t0 = time.perf_counter()
    results.close()
    assert time.perf_counter() - t0 < 1.0


def test_request_payloads_ask_for_logprobs(stub: tuple[Stub, str]) -> None:
    app, url = stub
    system, user = Message("system", "Be brief."), Message("user", "2+2?")
    asyncio.run(_backend(url, api_key="k1").acomplete([system, user], PARAMS))
    app.reply = json.dumps({"choices": [{"text": "4"}]}).encode()
    asyncio.run(_backend(url, mode="completions").acomplete([system, user], PARAMS))
    (chat_headers, chat), (text_headers, text) = app.requests
    assert chat_headers["authorization"] == "Bearer k1" and "authorization" not in text_headers
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    assert (chat["logprobs"], chat["top_logprobs"], chat["max_tokens"]) == (True, K, 16)
    assert (text["prompt"], text["logprobs"], text["model"]) == (
        "Be brief.\n\n2+2?",
        K,
        "stub-model",
    )


def test_reply_without_logprobs_gives_no_tokens(stub: tuple[Stub, str]) -> None:
    _, url = stub
    completion = asyncio.run(_backend(url).acomplete(QUESTION, PARAMS))
    assert (completion.response, completion.tokens, completion.finish_reason) == ("7", [], "stop")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 1)
    assert completion.usage_reported


def test_malformed_reply_is_a_backend_error(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.reply = b"<html>gateway</html>"
    with pytest.raises(BackendError, match=r"stubbed: bad reply from http://127\.0\.0\.1"):
        asyncio.run(_backend(url).acomplete(QUESTION, PARAMS))
    app.reply = b'{"choices": []}'
    with pytest.raises(BackendError, match="bad reply"):
        asyncio.run(_backend(url).acomplete(QUESTION, PARAMS))


def test_legacy_layout_is_converted_best_first() -> None:
    body = {
        "choices": [
            {
                "text": " 5.",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": ["?", " 5", "."],
                    "token_logprobs": [None, -0.5, -1.5],
                    "top_logprobs": [None, {" 4": -2.0, " 5": -0.5}, {"!": -0.9, ".": -1.5}],
                },
            }
        ]
    }
    completion = completion_from_reply(json.dumps(body).encode(), "m", 0.25)
    assert [(t.token, t.logprob) for t in completion.tokens] == [(" 5", -0.5), (".", -1.5)]
    assert [a.token for a in completion.tokens[1].top_logprobs] == ["!", "."]
    assert (completion.finish_reason, completion.usage.completion_tokens) == ("length", 2)
    assert not completion.usage_reported  # no `usage` in the reply: an estimate, logged as unknown
