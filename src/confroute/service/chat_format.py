"""A finished cascade as an OpenAI chat completion: JSON body, server-sent-event chunks, headers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from confroute.backends import Completion
from confroute.errors import BadRequest
from confroute.outcome import Cascade, spent, stage_cost, usage
from confroute.panel import Panel

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
        "choices": [{"index": 0, "message": _message(c), "finish_reason": c.finish_reason,
                     "logprobs": logprobs}],
        "usage": usage(out),
        "router": router_field(out, panel),
    }


def _message(c: Completion) -> dict[str, Any]:
    """The served message: its text, and its tool calls as the backend sent them."""
    if not c.tool_calls:
        return {"role": "assistant", "content": c.response}
    return {"role": "assistant", "content": c.response or None, "tool_calls": c.tool_calls}


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
    if c.tool_calls:  # judged whole like any answer, so each call goes in one piece
        calls = [{"index": i, **call} for i, call in enumerate(c.tool_calls)]
        yield _chunk(base, {"tool_calls": calls}, None)
    if c.response or not c.tool_calls:
        for piece in _pieces(out):
            yield _chunk(base, {"content": piece}, None)
    yield _chunk(base, {}, c.finish_reason, usage=usage(out), router=router_field(out, panel))
    yield b"data: [DONE]\n\n"


def parse_model(name: str, router_model: str) -> float | None:
    """`confroute` or `confroute:0.3` (λ); anything else is an unknown model."""
    base, sep, lam = name.partition(":")
    if base != router_model:
        raise BadRequest(f"unknown model {name!r}; use {router_model!r} or "
                         f"'{router_model}:<cost_quality_tradeoff in [0, 1]>'")
    if not sep:
        return None
    try:
        return float(lam)
    except ValueError:
        raise BadRequest(f"model {name!r}: {lam!r} is not a number in [0, 1]") from None


def router_field(out: Cascade, panel: Panel) -> dict[str, Any]:
    """The `router` field: which models were tried, their p_correct, decisions and reasons."""
    tried = []
    for i, s in enumerate(out.stages):
        entry: dict[str, Any] = {"model": s.model, "stage": i, "latency_s": round(s.latency_s, 4),
                                 "cost": stage_cost(s, panel)}
        if s.scored is not None:
            d, p = s.scored.decision, s.scored.p_correct
            entry |= {"decision": d.decision, "reason": d.reason, "threshold": d.threshold,
                      "p_correct": None if p != p else p, "prediction": s.scored.prediction,
                      "next_model": d.next_model}
            if d.values:
                entry["values"] = {k: round(float(x), 6) for k, x in d.values.items()}
        else:
            entry |= {"decision": "error", "reason": s.error}
        tried.append(entry)
    cost = spent(out, panel)
    assert out.served is not None
    start = None
    if out.start is not None:
        start = {"model": out.start.model, "reason": out.start.reason,
                 "values": {k: round(float(x), 6) for k, x in out.start.values.items()}}
    return {"request_id": out.request_id, "version": out.version.version,
            "cost_quality_tradeoff": out.lam, "model": out.served.model, "stopped": out.stopped,
            "start": start, "tried": tried, "cost": cost, "target_accuracy": out.target,
            "mode": "shadow" if out.stopped == "shadow" else "enforce"}


def span_attributes(out: Cascade, panel: Panel) -> dict[str, Any]:
    """The request span's attributes (tracing.py): what was served, at what λ, cost and tokens."""
    tokens = usage(out)
    served = out.served.model if out.served is not None else None
    return {"gen_ai.request.model": out.start.model if out.start else None,
            "gen_ai.response.model": served, "gen_ai.usage.input_tokens": tokens["prompt_tokens"],
            "gen_ai.usage.output_tokens": tokens["completion_tokens"],
            "confroute.lambda": out.lam, "confroute.version": out.version.version,
            "confroute.decision": out.stopped, "confroute.cost": spent(out, panel),
            "confroute.start_reason": out.start.reason if out.start else None,
            "confroute.models_called": len(out.stages), "confroute.request_id": out.request_id}

