"""POST /v1/chat/completions: call the panel cheapest first, score each answer, escalate per policy.

Each route model (policy.route(λ)) is called with logprobs on; its answer is scored like a
/v1/route request (agree_prev from the earlier stages' answers) and logged. The cascade stops at
the first accepted answer, at the route's last model, after `max_escalations`, or at the
deadline (then the latest answer is served). A failing backend is skipped (`on_error: skip`,
the next model is tried, and if none is left the latest answer is served) or fails the request
with 502 naming it (`on_error: fail`). An answer without logprobs has p_correct NaN and escalates.
With `explore_rate` ε > 0, a share ε of accepted answers also goes to the next route model in the
background; that stage is logged with decision "explore" and never changes the served answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from confroute.backends import Backend, Completion, GenParams, PromptTooLong
from confroute.panel import Panel
from confroute.service.decision_log import DecisionLog
from confroute.service.engine import Engine, RouterVersion, Scored, StageInput
from confroute.service.errors import BackendFailed, BadRequest, DeadlineExceeded
from confroute.service.metrics import Metrics
from confroute.service.route import record
from confroute.service.schemas import ChatRequest
from confroute.tokens import token_arrays
from confroute.traces import Message


@dataclass
class Stage:
    """One model called for a request: its answer and decision, or its error."""

    model: str
    latency_s: float
    completion: Completion | None = None
    scored: Scored | None = None
    error: str | None = None


@dataclass
class Cascade:
    """The outcome of one chat request."""

    request_id: str
    version: RouterVersion
    lam: float
    stages: list[Stage] = field(default_factory=list)
    served: Stage | None = None
    stopped: str = ""  # accepted | last_model | max_escalations | deadline | fallback


@dataclass(frozen=True)
class Limits:
    max_escalations: int | None = None
    deadline_s: float | None = None


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


class Proxy:
    """Runs cascades over the panel's backends."""

    def __init__(self, panel: Panel, backends: dict[str, Backend], engine: Engine,
                 log: DecisionLog, metrics: Metrics, max_chars: int,
                 explore_rate: float = 0.0) -> None:
        self.panel, self.backends, self.engine = panel, backends, engine
        self.log, self.metrics, self.max_chars = log, metrics, max_chars
        self.explore_rate = explore_rate  # share of accepted answers also sent to the next model
        self._background: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Let background explorations finish (at shutdown)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def params(self, req: ChatRequest) -> GenParams:
        d = self.panel.decoding
        return GenParams(
            max_tokens=req.max_completion_tokens or req.max_tokens or d.max_tokens,
            temperature=d.temperature if req.temperature is None else req.temperature,
            top_logprobs=d.top_logprobs, seed=req.seed or 0,
        )

    async def run(self, req: ChatRequest, limits: Limits, request_id: str) -> Cascade:
        """Call route models until one is accepted or a limit stops the cascade."""
        v = self.engine.require()
        model_lam = parse_model(req.model, self.panel.router_model)
        lam = self.engine.lam(req.cost_quality_tradeoff if req.cost_quality_tradeoff is not None
                              else model_lam)
        messages = [Message(m.role, m.text()) for m in req.messages]
        out, params = Cascade(request_id, v, lam), self.params(req)
        deadline = time.monotonic() + limits.deadline_s if limits.deadline_s else None
        route = v.policy.route(lam)
        for i, model in enumerate(route):
            stage = await self._call(model, messages, params, deadline)
            if stage is None:
                out.stopped = "deadline"
                break
            self._score(out, stage, i)
            stop = self._stop(stage, i, len(route), limits, deadline)
            if stop:
                out.stopped = stop
                if stop == "accepted" and random.random() < self.explore_rate:
                    self._explore(out, route[i + 1], i + 1, messages, params)
                break
        return self._finish(out)

    def _explore(self, out: Cascade, model: str, index: int, messages: list[Message],
                 params: GenParams) -> None:
        """Also run the next model on an accepted answer, in the background, and log it as
        decision "explore" (labels on both sides of the threshold for retraining)."""
        async def run() -> None:
            with contextlib.suppress(BackendFailed):  # counted in metrics; nothing to serve
                stage = await self._call(model, messages, params, None)
                if stage is not None and stage.completion is not None:
                    self._score(out, stage, index, explore=True)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _call(self, model: str, messages: list[Message], params: GenParams,
                    deadline: float | None) -> Stage | None:
        """Call one backend; None when the deadline passed before or while it answered."""
        spec = self.panel.get(model)
        left = deadline - time.monotonic() if deadline is not None else None
        if left is not None and left <= 0:
            return None
        timeout = spec.timeout_s if left is None else min(spec.timeout_s, left)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, no extra task per call
                c = await self.backends[model].acomplete(messages, params)
        except PromptTooLong as exc:  # the request does not fit: the caller's to fix, a 400
            raise BadRequest(f"{exc}; send a shorter prompt or a smaller max_tokens") from None
        except Exception as exc:  # any backend failure (BackendError, timeout, a crash) counts
            if isinstance(exc, TimeoutError) and left is not None and left < spec.timeout_s:
                return None
            return self._failed(model, spec.on_error, exc, time.perf_counter() - t0)
        dt = time.perf_counter() - t0
        self.metrics.backend_latency.labels(model).observe(dt)
        return Stage(model, dt, completion=c)

    def _failed(self, model: str, on_error: str, exc: BaseException, dt: float) -> Stage:
        """Count the failure; 502 for on_error=fail, else a stage that records the error."""
        kind = "timeout" if isinstance(exc, TimeoutError) else "error"
        message = str(exc) or f"{type(exc).__name__} after {dt:.1f} s"
        self.metrics.backend_errors.labels(model, kind).inc()
        if on_error == "fail":
            raise BackendFailed(f"backend {model!r} failed: {message}")
        return Stage(model, dt, error=message)

    def _score(self, out: Cascade, stage: Stage, index: int, explore: bool = False) -> None:
        """Decide on the stage's answer (agree_prev from earlier answers) and log it."""
        previous = [s.scored.prediction for s in out.stages if s.scored is not None]
        if not explore:
            out.stages.append(stage)
        c = stage.completion
        if c is None:
            return
        arr = token_arrays(c.tokens)
        length = c.usage.completion_tokens or None
        st = StageInput(stage.model, arr, c.response, c.finish_reason, length, previous)
        stage.scored = s = self.engine.decide(out.version, st, out.lam)
        decision = "explore" if explore else s.decision.decision
        self.metrics.decision(s.model, decision, s.p_correct)
        rec = record(s, out.request_id, index, out.lam, stage.latency_s, c.response, "chat",
                     self.max_chars)
        self.log.submit(msgspec.structs.replace(rec, decision=decision) if explore else rec)

    @staticmethod
    def _stop(stage: Stage, index: int, n: int, limits: Limits, deadline: float | None) -> str:
        """Why the cascade stops after this stage ('' to go on)."""
        s = stage.scored
        if s is not None and s.decision.decision == "accept":
            return "accepted" if s.decision.reason != "last_model" else "last_model"
        if index == n - 1:
            return "fallback"
        if limits.max_escalations is not None and index >= limits.max_escalations:
            return "max_escalations"
        if deadline is not None and time.monotonic() >= deadline:
            return "deadline"
        return ""

    def _finish(self, out: Cascade) -> Cascade:
        """Serve the accepted answer, else the latest one; 502/504 when there is none."""
        answered = [s for s in out.stages if s.completion is not None]
        if answered:
            out.served = answered[-1]
            return out
        errors = "; ".join(f"{s.model}: {s.error}" for s in out.stages)
        if out.stopped == "deadline":
            raise DeadlineExceeded(f"the deadline passed before any model answered ({errors})"
                                   if errors else "the deadline passed before any model answered")
        raise BackendFailed(f"no panel model answered: {errors}")


def usage(out: Cascade) -> dict[str, int]:
    """Tokens over every stage called (what the request consumed)."""
    done = [s.completion for s in out.stages if s.completion is not None]
    p = sum(c.usage.prompt_tokens for c in done)
    c = sum(c.usage.completion_tokens for c in done)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def router_field(out: Cascade, panel: Panel) -> dict[str, Any]:
    """The `router` field: which models were tried, their p_correct, decisions and reasons."""
    tried = []
    for i, s in enumerate(out.stages):
        entry: dict[str, Any] = {"model": s.model, "stage": i, "latency_s": round(s.latency_s, 4)}
        if s.scored is not None:
            d, p = s.scored.decision, s.scored.p_correct
            entry |= {"decision": d.decision, "reason": d.reason, "threshold": d.threshold,
                      "p_correct": None if p != p else p, "prediction": s.scored.prediction}
        else:
            entry |= {"decision": "error", "reason": s.error}
        tried.append(entry)
    cost = sum(panel.get(s.model).cost.of(s.completion.usage.prompt_tokens,
                                          s.completion.usage.completion_tokens)
               for s in out.stages if s.completion is not None)
    assert out.served is not None
    return {"request_id": out.request_id, "version": out.version.version,
            "cost_quality_tradeoff": out.lam, "model": out.served.model, "stopped": out.stopped,
            "tried": tried, "cost": cost}
