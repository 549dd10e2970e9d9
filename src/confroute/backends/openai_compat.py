"""OpenAI-compatible HTTP backend: `vllm serve`, llama.cpp's server, OpenAI, reached with aiohttp.

Chat mode posts to `/chat/completions` with `logprobs: true, top_logprobs: k` and reads
`choices[0].logprobs.content`, which is already the trace token layout. Completions mode posts
the messages' contents, joined by blank lines, as a raw prompt to `/completions` (no chat
template: for base models or prompts formatted by hand) and converts the legacy
`tokens/token_logprobs/top_logprobs` layout. Requests run concurrently up to `max_concurrency`
per event loop; connect errors, timeouts, 429 and 5xx are retried with exponential backoff.

Timeouts: `timeout_s` bounds the whole call, every attempt and backoff together (and the caller's
own deadline, when it passes one, bounds it further); each attempt gets `attempt_timeout_s`
(default: `timeout_s / (max_retries + 1)`) or what is left, whichever is less. So an attempt that
hangs is retried while the call still has time, and no retry starts that could not finish.

aiohttp rather than httpx: its C HTTP parser reads a 300-token top-5 reply (~90 KB) in ~0.3-0.6
ms where httpx took 1.0-1.9 ms (measured on loopback), and the proxy pays that on every stage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import msgspec

from confroute import tracing
from confroute.backends.base import Backend, BackendError, Completion, GenParams
from confroute.backends.openai_reply import completion_from_reply
from confroute.traces import Message

Mode = Literal["chat", "completions"]
_RETRY_STATUS = frozenset({408, 429})  # request timeout, rate limited; plus every 5xx
_MIN_ATTEMPT_S = 0.05  # a retry needs at least this long left after its backoff


class _Session(NamedTuple):
    """An HTTP client and a concurrency bound, both tied to one event loop."""

    client: aiohttp.ClientSession
    limit: asyncio.Semaphore


class OpenAICompatBackend(Backend):
    """A model served over the OpenAI API, asked for top-k logprobs."""

    kind = "openai"

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        mode: Mode = "chat",
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        backoff_s: float = 0.5,  # first retry waits this long, then 2x, 4x, ... (capped at 30 s)
        attempt_timeout_s: float | None = None,
    ) -> None:
        if mode not in ("chat", "completions"):
            raise ValueError(f"model {name!r}: mode must be 'chat' or 'completions', got {mode!r}")
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise ValueError(f"model {name!r}: base_url must be http(s)://..., got {base_url!r}")
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.mode = mode
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.attempt_timeout_s = min(timeout_s, attempt_timeout_s or timeout_s / (max_retries + 1))
        self.max_concurrency = max_concurrency
        self.backoff_s = backoff_s
        self._sessions: dict[asyncio.AbstractEventLoop, _Session] = {}

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> OpenAICompatBackend:
        """Build from a PanelModel spec dict (base_url required; `mode` defaults to chat)."""
        if not spec.get("base_url"):
            raise ValueError(f"model {name!r}: the openai backend needs base_url")
        opts = {k: spec[k] for k in ("timeout_s", "max_retries", "max_concurrency",
                                     "attempt_timeout_s") if k in spec}
        return cls(
            name,
            spec.get("model") or name,
            spec["base_url"],
            api_key=_api_key(name, spec),
            mode=spec.get("mode", "chat"),
            **opts,
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.mode == 'chat' else 'completions'}"

    def version(self) -> str | None:
        return f"openai-compatible {self.mode} {self.model} at {self.base_url}"

    # -- public calls ------------------------------------------------------------------------

    async def acomplete(self, messages: Sequence[Message], params: GenParams,
                        deadline: float | None = None) -> Completion:
        """Answer one prompt on the running event loop (one client per loop, kept open);
        `deadline` (time.monotonic()): the caller's, when sooner than `timeout_s` from now."""
        return await self._request(await self._loop_session(), messages, params, deadline)

    def complete_many(
        self, prompts: Sequence[Sequence[Message]], params: GenParams
    ) -> Iterator[tuple[int, Completion]]:
        """Send every prompt concurrently on a private loop thread; yield results as they finish.

        Works from any thread, with or without an event loop running in it; a consumer that
        stops early (or a failed request) cancels what is still in flight.
        """
        with _loop_thread(f"{self.name}-http") as loop:
            session = asyncio.run_coroutine_threadsafe(self._new_session(), loop).result()
            pending = {
                asyncio.run_coroutine_threadsafe(self._request(session, m, params), loop): i
                for i, m in enumerate(prompts)
            }
            try:
                for done in concurrent.futures.as_completed(pending):
                    yield pending[done], done.result()
            finally:
                for fut in pending:
                    fut.cancel()
                asyncio.run_coroutine_threadsafe(_drain(session), loop).result()

    async def aclose(self) -> None:
        """Close the client of the running event loop."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.client.close()

    def close(self) -> None:
        """Forget every loop's client (an async caller should await aclose() first)."""
        self._sessions.clear()

    # -- plumbing ----------------------------------------------------------------------------

    async def _new_session(self) -> _Session:
        """A client on the running loop (aiohttp binds its sessions to the loop that made them)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        client = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(self.timeout_s))
        return _Session(client, asyncio.Semaphore(self.max_concurrency))

    async def _loop_session(self) -> _Session:
        loop = asyncio.get_running_loop()
        for old in [lp for lp in self._sessions if lp.is_closed()]:
            del self._sessions[old]
        if loop not in self._sessions:
            self._sessions[loop] = await self._new_session()
        return self._sessions[loop]

    async def _request(
        self, session: _Session, messages: Sequence[Message], params: GenParams,
        deadline: float | None = None,
    ) -> Completion:
        """One completion; latency counts from the request's first attempt to its reply."""
        async with session.limit:
            t0 = time.perf_counter()
            own = time.monotonic() + self.timeout_s
            body = await self._post(session.client, self._payload(messages, params),
                                    own if deadline is None else min(own, deadline))
            return self._parse(body, time.perf_counter() - t0)

    def _payload(self, messages: Sequence[Message], params: GenParams) -> dict[str, Any]:
        common = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
        }
        if self.mode == "chat":
            logprobs = {"logprobs": True, "top_logprobs": params.top_logprobs}
            return {**common, **logprobs, **params.tool_options, "messages": list(messages)}
        if params.tool_options or any(m.tool_calls or m.tool_call_id for m in messages):
            raise BackendError(f"{self.name}: tool calling needs mode chat (this model uses the "
                               "completions endpoint)")
        prompt = "\n\n".join(m.content for m in messages)
        return {**common, "prompt": prompt, "logprobs": params.top_logprobs}

    async def _post(self, client: aiohttp.ClientSession, payload: dict[str, Any],
                    deadline: float) -> bytes:
        """POST with retries on transport errors, timeouts, 429 and 5xx, all before `deadline`
        (time.monotonic()); the reply body. A hand-written loop: aiohttp has no retries, and
        the libraries that add them (tenacity, aiohttp-retry) do not bound every attempt and
        backoff by one deadline."""
        content = msgspec.json.encode(payload)
        headers = {"Content-Type": "application/json"}
        tracing.inject(headers)  # the stage span's W3C trace context, while tracing is on
        cause, attempts = "", 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                wait = min(30.0, self.backoff_s * 2 ** (attempt - 1))
                if deadline - time.monotonic() <= wait + _MIN_ATTEMPT_S:
                    cause += f"; no time left for a retry within {self.timeout_s:g} s"
                    break
                await asyncio.sleep(wait)
            limit = min(self.attempt_timeout_s, deadline - time.monotonic())
            if limit <= 0:
                break
            attempts += 1
            try:
                async with asyncio.timeout(limit), client.post(
                    self.url, data=content, headers=headers
                ) as reply:
                    status, body = reply.status, await reply.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = _describe(exc, limit)
                continue
            if 200 <= status < 300:
                return body
            cause = f"HTTP {status}: {body[:300].decode('utf-8', 'replace').strip()}"
            if not _retryable(status):
                raise self._error(cause, attempt + 1)
        raise self._error(cause or f"no time left within {self.timeout_s:g} s", attempts)

    def _error(self, cause: str, attempts: int) -> BackendError:
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        return BackendError(f"{self.name}: POST {self.url} failed after {tries}: {cause}")

    def _parse(self, body: bytes, latency_s: float) -> Completion:
        try:
            return completion_from_reply(body, self.name, latency_s)
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            raise BackendError(f"{self.name}: bad reply from {self.url}: {exc}") from None


# -- helpers -----------------------------------------------------------------------------------


def _api_key(name: str, spec: dict[str, Any]) -> str | None:
    """The bearer token: `api_key`, else the variable named by `api_key_env` (which must be set)."""
    if spec.get("api_key"):
        return str(spec["api_key"])
    env = spec.get("api_key_env")
    if not env:
        return None
    if not os.environ.get(env):
        raise BackendError(f"model {name!r}: api_key_env names {env}, which is not set")
    return os.environ[env]


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return f"timed out after {timeout_s:g} s ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc or type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


async def _drain(session: _Session) -> None:
    """Let cancelled requests unwind, then close the client."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)
    await session.client.close()


@contextlib.contextmanager
def _loop_thread(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own daemon thread, stopped and closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
