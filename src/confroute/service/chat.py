"""POST /v1/chat/completions: the escalating OpenAI-compatible chat (parse, run the cascade, reply).

Served as a plain ASGI endpoint dispatched by EdgeMiddleware, as /v1/route is: FastAPI's routing,
dependency and response layers cost a few hundred µs per request, which was half of the proxy's
overhead over a direct backend call. FastAPI's declaration of the route (app.py) stays, for the
OpenAPI schema, and calls the same `respond`, so both ways in answer alike. The request is parsed
by the same pydantic models (422 naming the field), errors map through errors.py, and a client
that goes away while the panel answers cancels the cascade (the embedded backend drops its
sequences from the running batch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from confroute import tracing
from confroute.errors import BadRequest, RoutingError
from confroute.outcome import Cascade
from confroute.panel import Panel
from confroute.request_plan import Limits
from confroute.runner import ChatTask
from confroute.service import chat_format
from confroute.service.edge import bearer_token, check_json_content_type, check_key, send_json
from confroute.service.errors import is_utf8, plain_error, validation_json
from confroute.service.route import encode, new_request_id, read_body, request_id_text
from confroute.service.schemas import ChatHeaders, ChatMessage, ChatRequest
from confroute.traces import Message

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """What a chat request answers: a JSON body, or server-sent events."""

    headers: dict[str, str]
    body: bytes | None = None
    events: AsyncIterator[bytes] | None = None


async def respond(res: Any, body: ChatRequest, hdrs: ChatHeaders,
                  until: Receive | None = None) -> Reply | None:
    """Run the cascade for one chat request; None when the client left (`until` said so)."""
    max_escalations, deadline_s = hdrs.max_escalations, hdrs.deadline_s
    if body.router is not None:
        max_escalations, deadline_s = body.router.max_escalations, body.router.deadline_s
    limits = Limits(max_escalations, deadline_s, body.max_cost, body.max_models)
    model_lam = chat_format.parse_model(body.model, res.panel.router_model)
    lam = body.cost_quality_tradeoff if body.cost_quality_tradeoff is not None else model_lam
    tool_options = _tools(body, res.panel)
    for i, m in enumerate(body.messages):
        parts = m.content if isinstance(m.content, list) else []
        other = [p.type for p in parts if p.type != "text"]
        if other:
            raise BadRequest(f"messages[{i}].content: part type {other[0]!r} is not supported; "
                             "the panel reads text parts only")
    if not any(m.text().strip() for m in body.messages):
        raise BadRequest("messages hold no text: nothing to answer")
    task = ChatTask([_message(m) for m in body.messages], lam,
                    body.target_accuracy, body.max_completion_tokens or body.max_tokens,
                    body.temperature, body.seed, tool_options, hdrs.session or body.user)
    carrier = {"traceparent": hdrs.traceparent, "tracestate": hdrs.tracestate}
    with tracing.request_span("confroute chat", carrier, {"gen_ai.operation.name": "chat",
                                                          "confroute.endpoint": "chat"}) as span:
        run = res.runner.run(task, limits, hdrs.request_id or new_request_id())
        out: Cascade | None = await (run if until is None else unless_disconnected(run, until))
        if out is None:
            return None
        tracing.annotate(span, chat_format.span_attributes(out, res.panel))
    headers = chat_format.headers(out)
    if body.stream:
        return Reply(headers, events=chat_format.sse(out, res.panel))
    return Reply(headers, encode(chat_format.completion_body(out, res.panel, body.logprobs)))


def _tools(body: ChatRequest, panel: Panel) -> dict[str, Any]:
    """The request's `tools`, `tool_choice` and `parallel_tool_calls`, checked: tool calling (or
    a conversation holding tool calls) goes to OpenAI-compatible chat backends only."""
    extra = body.model_extra or {}
    for legacy in ("functions", "function_call"):
        if extra.get(legacy) is not None:
            raise BadRequest(f"{legacy}: the legacy function-calling fields are not supported; "
                             "send tools and tool_choice")
    tools = extra.get("tools")
    given = {k: extra[k] for k in ("tool_choice", "parallel_tool_calls") if extra.get(k) is not None}
    if tools is None and given:
        raise BadRequest(f"{next(iter(given))}: needs tools")
    if tools is not None:
        if not (isinstance(tools, list) and tools and all(isinstance(t, dict) for t in tools)):
            raise BadRequest("tools: a non-empty list of tool objects")
        _check_choice(given.get("tool_choice"), tools)
        if not isinstance(given.get("parallel_tool_calls", True), bool):
            raise BadRequest("parallel_tool_calls: true or false")
    history = any(m.role == "tool" or m.tool_calls for m in body.messages)
    if tools is None and not history:
        return {}
    text_only = [m.name for m in panel.models
                 if m.backend != "openai" or getattr(m, "mode", "chat") != "chat"]
    if text_only:
        raise BadRequest(f"tool calling needs OpenAI-compatible chat backends; panel models "
                         f"{text_only} are not (send the request without tools)")
    return {"tools": tools, **given}


def _check_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    """tool_choice as OpenAI takes it: none, auto, required, or one of the tools by name."""
    if choice is None or choice in ("none", "auto", "required"):
        return
    names = {(t.get("function") or {}).get("name") for t in tools}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and name in names):
        raise BadRequest("tool_choice: none, auto, required, or {\"type\": \"function\", "
                         "\"function\": {\"name\": <one of the tools>}}")


def _message(m: ChatMessage) -> Message:
    calls = [c.model_dump() for c in m.tool_calls] if m.tool_calls else None
    return Message(m.role, m.text(), name=m.name, tool_calls=calls, tool_call_id=m.tool_call_id)


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T | None:
    """`work`'s result, or None (and `work` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler cancelled (shutdown): the cascade goes with it
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    if not watch.cancelled() and watch.done() and watch.exception() is not None:
        task.cancel()  # the watcher itself failed: not a disconnect; say so, cascade or not
        raise watch.exception()  # type: ignore[misc]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


class ChatEndpoint:
    """POST /v1/chat/completions as a plain ASGI endpoint (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            reply = await self._handle(scope, receive)
        except (RoutingError, HTTPException) as exc:
            body, status, headers = plain_error(exc)
            await send_json(send, status, body, headers)
            return
        except InvalidRequest as exc:
            await send_json(send, 422, validation_json(exc.errors))
            return
        if reply is None:  # the client went away: nobody to answer
            self.app.state.metrics.disconnects.inc()
            return
        if reply.events is None:
            assert reply.body is not None
            await send_json(send, 200, reply.body, _raw(reply.headers))
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), *_raw(reply.headers)]})
        async for chunk in reply.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _handle(self, scope: Scope, receive: Receive) -> Reply | None:
        res = self.app.state.resources
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:  # a repeated header: its first value, as Starlette reads it
            headers.setdefault(k.decode("latin-1"), v.decode("latin-1"))
        if "x-request-id" in headers:  # UTF-8, as /v1/route reads it (latin-1 gives the bytes back)
            headers["x-request-id"] = request_id_text(headers["x-request-id"].encode("latin-1"))
        if res.settings.require_key_for_all:
            check_key(res.settings, bearer_token(headers.get("authorization", "").encode("latin-1")))
        check_json_content_type(headers.get("content-type"))
        raw = (await read_body(receive)).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM: dropped
        hdrs, body, errors = None, None, list[Any]()
        try:
            hdrs = ChatHeaders.model_validate(headers)
        except ValidationError as exc:  # reported together with the body's, one 422
            errors += [{**e, "loc": ("header", *e["loc"])} for e in exc.errors(include_url=False)]
        try:
            body = ChatRequest.model_validate_json(raw)
        except ValidationError as exc:
            if not is_utf8(raw):  # in /v1/route's words, not the JSON parser's
                raise BadRequest("the body is not valid UTF-8") from None
            errors += exc.errors(include_url=False)
        if errors or hdrs is None or body is None:
            raise InvalidRequest(errors)
        return await respond(res, body, hdrs, until=receive)


class InvalidRequest(Exception):
    """The request's header and body validation errors, for one 422."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("invalid request")
        self.errors = errors


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Reply headers as bytes; values in UTF-8 (the x-request-id echoed as the client sent it)."""
    return [(k.encode("latin-1"), v.encode("utf-8")) for k, v in headers.items()]

