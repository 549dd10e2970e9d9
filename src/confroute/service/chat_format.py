"""A finished cascade as an OpenAI chat completion: JSON body, server-sent-event chunks, headers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from confroute.panel import Panel
from confroute.service.proxy import Cascade, router_field, usage

_encode = msgspec.json.Encoder().encode
_CHUNK_TOKENS = 8  # tokens per streamed content chunk


def headers(out: Cascade) -> dict[str, str]:
    assert out.served is not None
    return {
        "x-confroute-model": out.served.model,
        "x-confroute-tried": ",".join(s.model for s in out.stages),
        "x-confroute-version": out.version.version,
        "x-request-id": out.request_id,
    }


def completion_body(out: Cascade, panel: Panel, with_logprobs: bool) -> dict[str, Any]:
    """The served answer as an ordinary chat completion, plus the `router` field."""
    c = out.served.completion if out.served else None
    assert c is not None
    logprobs = {"content": [msgspec.to_builtins(t) for t in c.tokens]} if with_logprobs else None
    return {
        "id": f"chatcmpl-{out.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": c.model or out.served.model,  # type: ignore[union-attr]
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.response},
                     "finish_reason": c.finish_reason, "logprobs": logprobs}],
        "usage": usage(out),
        "router": router_field(out, panel),
    }


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None,
           **extra: Any) -> bytes:
    body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + _encode(body) + b"\n\n"


def _pieces(out: Cascade) -> list[str]:
    """The answer in small pieces (groups of tokens when there are tokens)."""
    c = out.served.completion if out.served else None
    assert c is not None
    toks = [t.token for t in c.tokens]
    if toks and "".join(toks) == c.response:
        return ["".join(toks[i : i + _CHUNK_TOKENS]) for i in range(0, len(toks), _CHUNK_TOKENS)]
    step = 32
    return [c.response[i : i + step] for i in range(0, len(c.response), step)] or [""]


async def sse(out: Cascade, panel: Panel) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events of the served answer, then `data: [DONE]`."""
    c = out.served.completion if out.served else None
    assert c is not None and out.served is not None
    base = {"id": f"chatcmpl-{out.request_id}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": c.model or out.served.model}
    yield _chunk(base, {"role": "assistant", "content": ""}, None)
    for piece in _pieces(out):
        yield _chunk(base, {"content": piece}, None)
    yield _chunk(base, {}, c.finish_reason, usage=usage(out), router=router_field(out, panel))
    yield b"data: [DONE]\n\n"
