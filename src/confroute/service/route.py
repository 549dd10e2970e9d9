"""POST /v1/route: decide on answers given with their logprobs (decode, score, log, reply)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace as dc_replace
from typing import Any

import msgspec
import numpy as np
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from confroute import tracing
from confroute.decisions.log import DecisionLog
from confroute.decisions.records import decision_record, named_signals
from confroute.engine import Engine, Scored, StageInput
from confroute.errors import BadRequest, RoutingError
from confroute.features import TokenArrays
from confroute.policy_api import Decision
from confroute.request_plan import Limits, Plan, plan
from confroute.service.edge import bearer_token, check_json_content_type, check_key, send_json
from confroute.service.errors import bad_body, plain_error
from confroute.service.metrics import Metrics
from confroute.service.schemas import (
    MAX_REQUEST_ID,
    RouteBatch,
    RouteBatchResult,
    RouteDecision,
    RouteRequest,
    WireToken,
)
from confroute.tokens import compact_arrays, token_arrays
from confroute.versions import RouterVersion

Request = RouteRequest[WireToken]
_decode_one = msgspec.json.Decoder(Request | list[Request]).decode
_decode_batch = msgspec.json.Decoder(RouteBatch[WireToken]).decode
encode = msgspec.json.Encoder().encode
_SOURCES = "choices (a chat completion), logprobs.content, content, tokens or compact"


def decode(body: bytes, batch: bool) -> list[Request]:
    """The request(s) of a /v1/route body; 400 naming the field on anything malformed."""
    try:
        got = _decode_batch(body).items if batch else _decode_one(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise bad_body(exc, body) from None
    except UnicodeDecodeError:  # invalid UTF-8 inside a JSON string
        raise BadRequest("the body is not valid UTF-8") from None
    return got if isinstance(got, list) else [got]


def header_request_id(value: bytes | None) -> str | None:
    """The x-request-id header as text (request_id_text); 400 when longer than a request id may
    be (feedback could not name it)."""
    if not value:
        return None
    rid = request_id_text(value)
    if len(rid) > MAX_REQUEST_ID:
        raise BadRequest(f"x-request-id: at most {MAX_REQUEST_ID} characters, got {len(rid)}")
    return rid


def request_id_text(value: bytes) -> str:
    """An x-request-id header value in UTF-8, as clients write non-ASCII ids: read as latin-1 it
    was logged as mojibake that feedback (JSON, so Unicode) could never name. 400 if not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("x-request-id: not valid UTF-8") from None


def new_request_id() -> str:
    return uuid.uuid4().hex


def _tokens(req: Request) -> tuple[list[WireToken], str | None, str | None]:
    """Tokens, text and finish_reason from whichever layout the request used."""
    if req.choices is not None:
        if not req.choices:
            raise BadRequest("`choices` is empty")
        c = req.choices[0]
        if c.logprobs is None or c.logprobs.content is None:
            raise BadRequest("choices[0] has no logprobs.content; ask the server for logprobs "
                             "(logprobs: true, top_logprobs: k)")
        text = c.message.content if c.message else None
        return c.logprobs.content, req.response or text, req.finish_reason or c.finish_reason
    if req.logprobs is not None:
        if req.logprobs.content is None:
            raise BadRequest("`logprobs` has no `content` list")
        return req.logprobs.content, req.response, req.finish_reason
    tokens = req.content if req.content is not None else req.tokens
    assert tokens is not None
    return tokens, req.response, req.finish_reason


def stage_input(req: Request, model: str, previous: Sequence[str | None],
                called: Sequence[str] = ()) -> StageInput:
    """The request as a StageInput; 400 when the tokens are missing, empty or impossible."""
    given = [x for x in (req.choices, req.logprobs, req.content, req.tokens, req.compact)
             if x is not None]
    if len(given) != 1:
        raise BadRequest(f"give the tokens in exactly one of: {_SOURCES} (got {len(given)})")
    if req.compact is not None:
        arr, text, finish = _compact(req), req.response, req.finish_reason
    else:
        tokens, text, finish = _tokens(req)
        if not tokens:
            raise BadRequest("the token list is empty: nothing to judge")
        arr = token_arrays(tokens)
    _check_values(arr)
    length = req.usage.completion_tokens if req.usage and req.usage.completion_tokens else None
    message = req.choices[0].message if req.choices else None
    calls = message is not None and bool(message.tool_calls)
    return StageInput(model, arr, text, finish, length, previous, called,
                      tool_call=calls or finish == "tool_calls")


def _compact(req: Request) -> TokenArrays:
    c = req.compact
    assert c is not None
    n = len(c.logprob)
    if n == 0:
        raise BadRequest("compact.logprob is empty: nothing to judge")
    if c.top_logprobs and len(c.top_logprobs) != n:
        raise BadRequest(f"compact.top_logprobs has {len(c.top_logprobs)} rows for {n} tokens")
    if c.tokens is not None and len(c.tokens) != n:
        raise BadRequest(f"compact.tokens has {len(c.tokens)} entries for {n} logprobs")
    return compact_arrays(c.logprob, c.top_logprobs or [[]] * n, c.tokens)


def _check_values(arr: TokenArrays) -> None:
    """Logprobs are log-probabilities: finite (JSON cannot say otherwise) and at most 0."""
    for name, a in (("logprob", arr.logprob), ("top_logprobs", arr.top)):
        bad = a > 1e-3  # NaN (a missing, masked alternative) compares False: never flagged
        if bad.any():
            at = tuple(np.argwhere(bad)[0])  # the first offending token (and alternative)
            raise BadRequest(f"{name} must be <= 0 (log-probabilities); token {int(at[0])} has "
                             f"{float(a[at]):g}")


def reply(s: Scored, request_id: str, stage: int, lam: float, signals: bool) -> RouteDecision:
    d = s.decision
    names = named_signals(s) if signals else None
    values = {k: round(float(x), 6) for k, x in d.values.items()} if d.values else None
    return RouteDecision(
        request_id, stage, s.model, d.decision, None if math.isnan(s.p_correct) else s.p_correct,
        d.threshold, d.next_model, d.reason, s.version, lam, s.prediction, names, values,
    )


def _called(engine: Engine, v: RouterVersion, req: Request, model: str) -> list[str]:
    """The models called before this answer (`previous_models`), checked against the panel."""
    if not req.previous_models:
        return []
    names = [engine.resolve_model(v, m) for m in req.previous_models]
    if len(names) != len(req.previous):
        raise BadRequest(f"previous_models names {len(names)} models for {len(req.previous)} "
                         "previous answers; give one model per answer")
    order = [v.models.index(m) for m in (*names, model)]
    if order != sorted(set(order)):
        raise BadRequest(f"previous_models {names} and model {model!r} must be distinct panel "
                         f"models in panel order {list(v.models)}")
    return names


def _capped(s: Scored, req: Request, engine: Engine, p: Plan) -> Scored:
    """The decision with the request's limits applied (request_plan.Plan.stop_before, as the
    chat runner applies them): once max_models answered, or when the next call could take the
    request past max_cost, this answer stands."""
    d = s.decision
    if d.decision == "accept" or d.next_model is None:
        return s
    panel = engine.panel
    prompt = req.usage.prompt_tokens or 0 if req.usage else 0
    spent = req.cost_so_far
    if spent is None:
        done = req.usage.completion_tokens or 0 if req.usage else 0
        spent = panel.get(s.model).cost.of(prompt, done) \
            if panel is not None and s.model in panel.names else 0.0
    max_tokens = panel.decoding.max_tokens if panel is not None else 0
    stop = p.stop_before(panel, d.next_model, len(req.previous) + 1, spent, prompt, max_tokens)
    if stop is None:
        return s
    return dc_replace(s, decision=Decision("accept", d.threshold, None, stop, d.values))


def route(engine: Engine, log: DecisionLog, metrics: Metrics, reqs: list[Request],
          header_id: str | None, max_chars: int, max_batch: int
          ) -> tuple[list[RouteDecision], int]:
    """Decide on every request (one ONNX call per model), log each decision, build the replies;
    with the last record's log sequence number (the reply waits for it in durable mode)."""
    t0 = time.perf_counter()
    if not reqs or len(reqs) > max_batch:
        raise BadRequest(f"a batch holds 1 to {max_batch} items, got {len(reqs)}")
    v: RouterVersion = engine.require()
    stages, plans = [], []
    for req in reqs:
        model = engine.resolve_model(v, req.model)
        called = _called(engine, v, req, model)
        stages.append(stage_input(req, model, [engine.answer(a) for a in req.previous], called))
        plans.append(plan(engine, v, req.cost_quality_tradeoff, req.target_accuracy,
                          Limits(max_cost=req.max_cost, max_models=req.max_models)))
    lams = [p.lam for p in plans]
    scored = [_capped(s, req, engine, p) for s, req, p in
              zip(engine.decide_many(v, stages, lams), reqs, plans, strict=True)]
    latency = (time.perf_counter() - t0) / len(reqs)
    out, seq = [], 0
    for req, st, s, lam in zip(reqs, stages, scored, lams, strict=True):
        rid = req.request_id or (header_id if len(reqs) == 1 else None) or new_request_id()
        stage = req.stage if req.stage is not None else len(req.previous)
        metrics.decision(s.model, s.decision.decision, s.p_correct)
        tokens = (req.usage.prompt_tokens, req.usage.completion_tokens) if req.usage else \
            (None, None)
        seq = log.submit(decision_record(s, rid, stage, lam, latency, st.text or st.arrays.text,
                                         "route", max_chars, tokens))
        out.append(reply(s, rid, stage, lam, req.return_signals))
    return out, seq


class RouteEndpoint:
    """POST /v1/route and /v1/route/batch as plain ASGI endpoints, dispatched by EdgeMiddleware.

    FastAPI's routing, middleware and dependency layers cost about 450 µs per request here, as
    much as decoding the 90 KB body, so this hot endpoint skips them (the docs are added to the
    OpenAPI schema by hand in app.py). Errors map through errors.py like everywhere else.
    """

    def __init__(self, app: Any, batch: bool) -> None:
        self.app, self.batch = app, batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = []
        try:
            body, status = await self._handle(scope, receive), 200
        except (RoutingError, HTTPException) as exc:
            body, status, headers = plain_error(exc)
        await send_json(send, status, body, headers)

    async def _handle(self, scope: Scope, receive: Receive) -> bytes:
        res, metrics = self.app.state.resources, self.app.state.metrics
        headers = dict(scope["headers"])
        if res.settings.require_key_for_all:
            check_key(res.settings, bearer_token(headers.get(b"authorization")))
        kind = headers.get(b"content-type")
        check_json_content_type(kind.decode("latin-1") if kind is not None else None)
        body = await read_body(receive)
        reqs = decode(body, self.batch)
        rid = header_request_id(headers.get(b"x-request-id"))
        if tracing.on():
            out, seq = _traced(res, metrics, reqs, rid, headers)
        else:
            out, seq = route(res.engine, res.log, metrics, reqs, rid,
                             res.settings.log_response_chars, res.settings.max_batch)
        await res.log.settled(seq)  # durable mode: on disk before the reply
        if self.batch:
            return encode(RouteBatchResult(out))
        return encode(out if body.lstrip()[:1] == b"[" else out[0])


def _traced(res: Any, metrics: Metrics, reqs: list[Request], rid: str | None,
            headers: dict[bytes, bytes]) -> tuple[list[RouteDecision], int]:
    """`route` inside a request span (tracing.py), the caller's trace context its parent."""
    carrier = {k: headers[k.encode()].decode("latin-1") for k in ("traceparent", "tracestate")
               if k.encode() in headers}
    with tracing.request_span("confroute route", carrier, {"confroute.endpoint": "route",
                                                           "confroute.items": len(reqs)}) as span:
        out, seq = route(res.engine, res.log, metrics, reqs, rid,
                         res.settings.log_response_chars, res.settings.max_batch)
        if len(out) == 1:
            d = out[0]
            tracing.annotate(span, {"gen_ai.request.model": d.model, "confroute.p_correct":
                                    d.p_correct, "confroute.decision": d.decision,
                                    "confroute.reason": d.reason, "confroute.lambda": d.cost_quality_tradeoff,
                                    "confroute.version": d.version,
                                    "confroute.request_id": d.request_id})
    return out, seq


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)

