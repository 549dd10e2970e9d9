"""Running a cascade over the panel's backends: pick the first model, score each answer,
escalate per policy. The HTTP layer (service/app.py, chat_format.py) turns a chat request into a
`ChatTask` and the finished `Cascade` into OpenAI's reply; nothing here knows HTTP.

The policy picks the first model from the question (policy.first: the cascade policy reads the
query features; the route-and-thresholds table starts at its route's first model). Each model is
called with logprobs on; its answer is scored like a /v1/route request (agree_prev from the
earlier stages' answers) and the policy says accept, escalate or skip ahead to a later model.
The cascade stops at the first accepted answer, when no model is left, after
`max_escalations`, or at the deadline (then the latest answer is served). A failing backend is
skipped (`on_error: skip`: the next model is tried, and if none is left the latest answer is
served) or fails the request with 502 naming it (`on_error: fail`). An answer without logprobs
has p_correct NaN and is never accepted while a model is left. With `explore_rate` ε > 0, a
share ε of accepted answers also goes to the next model in the background; that stage is logged
with decision "explore" and never changes the served answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, Protocol

import msgspec

from confroute import tracing
from confroute.backends import Backend, GenParams, PromptTooLong
from confroute.decisions.log import DecisionLog
from confroute.decisions.records import decision_record, shadow_id
from confroute.engine import Engine, StageInput
from confroute.errors import BackendFailed, BadRequest, DeadlineExceeded
from confroute.exploration import explore_decision, explore_first
from confroute.looper import Budget
from confroute.outcome import Cascade, Stage, spent, stage_attributes
from confroute.panel import Panel
from confroute.policy_api import Start
from confroute.query import query_features, question_of
from confroute.request_plan import (
    Limits,
    Plan,
    call_bound,
    first_call_fits,
    plan,
    prompt_tokens,
)
from confroute.sessions import Sessions
from confroute.tokens import token_arrays
from confroute.traces import Message


class RunObserver(Protocol):
    """What a cascade reports as it runs (the service's Prometheus metrics implement it)."""

    def backend_call(self, model: str, seconds: float) -> None: ...

    def backend_error(self, model: str, kind: str) -> None: ...

    def decision(self, model: str, decision: str, p_correct: float) -> None: ...

    def shadow(self, would_answer: str, served_cost: float, would_cost: float) -> None: ...


@dataclass(frozen=True)
class ChatTask:
    """One chat request as the runner sees it (the HTTP layer builds it from the body)."""

    messages: list[Message]
    lam: float | None = None  # cost_quality_tradeoff; None: the default
    target_accuracy: float | None = None  # picks λ instead, when set
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    # OpenAI tool calling, checked and passed to the backends: tools, tool_choice,
    # parallel_tool_calls (empty: none)
    tool_options: dict[str, Any] = field(default_factory=dict)
    session: str | None = None  # the conversation key (sessions.py); None: judged alone


class CascadeRunner:
    """Runs cascades over the panel's backends."""

    def __init__(self, panel: Panel, backends: dict[str, Backend], engine: Engine,
                 log: DecisionLog, metrics: RunObserver, max_chars: int,
                 explore_rate: float = 0.0, budget: Budget | None = None,
                 shadow: str | None = None, sessions: Sessions | None = None,
                 explore_route: float = 0.0, explore_max_cost: float | None = None) -> None:
        self.panel, self.backends, self.engine = panel, backends, engine
        self.log, self.metrics, self.max_chars = log, metrics, max_chars
        self.explore_rate = explore_rate  # share of accepted answers also sent to the next model
        self.budget = budget  # a looper config's caps: the limits of requests that set none
        self.shadow = shadow  # shadow mode: the model always served (None: the router decides)
        self.sessions = sessions  # conversations keep their model (None: off)
        self.explore_route = explore_route  # ε of route exploration (exploration.py)
        self.explore_max_cost = explore_max_cost  # the dearest call exploration may choose
        self._rng = random.Random()
        self._background: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Let background explorations finish (at shutdown)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def params(self, task: ChatTask) -> GenParams:
        d = self.panel.decoding
        return GenParams(
            max_tokens=task.max_tokens or d.max_tokens,
            temperature=d.temperature if task.temperature is None else task.temperature,
            top_logprobs=d.top_logprobs, seed=task.seed or 0,
            tool_options=task.tool_options,
        )

    async def run(self, task: ChatTask, limits: Limits, request_id: str) -> Cascade:
        """Call route models until one is accepted or a limit stops the cascade."""
        v = self.engine.require()
        p = plan(self.engine, v, task.lam, task.target_accuracy, limits, self.budget)
        policy = self.engine.policy(v)
        messages = task.messages
        out, params = Cascade(request_id, v, p.lam, target=p.target), self.params(task)
        deadline = time.monotonic() + p.limits.deadline_s if p.limits.deadline_s else None
        if self.shadow is not None:
            served = await self._serve_shadow(out, policy, messages, params, p, deadline)
        else:
            sessions, key = self.sessions, task.session
            floor = await sessions.last(key) if sessions is not None and key is not None else None
            await self._cascade(out, policy, messages, params, p, deadline, floor=floor)
            served = self._finish(out)
            if sessions is not None and key is not None and served.served is not None:
                await sessions.answered(key, served.served.model)
        await self.log.settled(out.last_seq)  # durable mode: on disk before the reply
        return served

    async def _cascade(self, out: Cascade, policy: Any, messages: list[Message],
                       params: GenParams, p: Plan, deadline: float | None,
                       reuse: Stage | None = None, floor: str | None = None) -> None:
        """The router's cascade into `out`: first model, then accept / escalate / skip ahead.
        `reuse`: an answer already in hand (shadow mode's served call) stands in for its call;
        `floor`: the model that answered the conversation's previous turn (no start below it)."""
        lam = out.lam
        start = policy.first(lam, self._query(policy, messages))
        order = out.version.models
        if floor in order and start.model in order and order.index(start.model) < order.index(floor):
            start = Start(floor, start.values, "session")
        eps = self.explore_route if out.endpoint == "chat" and start.reason != "session" else 0.0
        allowed = self._explorable(messages, params)
        start, prop = explore_first(start, order, eps, self._rng, allowed)
        out.start = start
        model: str | None = start.model
        i = 0
        while model is not None:
            limit = self._limit(out, p, model, messages, params)
            if limit:
                out.stopped = limit
                break
            with tracing.stage_span(model) as span:
                stage = Stage(model, reuse.latency_s, reuse.completion, error=reuse.error) \
                    if reuse is not None and reuse.model == model else \
                    await self._call(model, messages, params, deadline)
                if stage is not None:
                    stage.propensity, stage.choice_eps = prop, eps
                    self._score(out, stage, i, eps=eps, allowed=allowed)
                    prop = stage.next_prob
                    tracing.annotate(span, stage_attributes(stage, self.panel))
            if stage is None:
                out.stopped = "deadline"
                break
            nxt = self._next(policy, stage, lam)
            stop = self._stop(stage, nxt, i, p.limits, deadline)
            if stop:
                out.stopped = stop
                after = policy.after(lam, model)
                if stop == "accepted" and after and out.endpoint == "chat" and \
                        random.random() < self.explore_rate:
                    self._explore(out, after, i + 1, messages, params)
                break
            model, i = nxt, i + 1

    async def _serve_shadow(self, out: Cascade, policy: Any, messages: list[Message],
                            params: GenParams, p: Plan, deadline: float | None
                            ) -> Cascade:
        """Shadow mode: serve the fixed model's answer; in the background, run the router's
        cascade on the same request (reusing that answer where the cascade reaches the fixed
        model), log its stages with endpoint "shadow" and count what it would have cost."""
        assert self.shadow is not None
        stage = await self._call(self.shadow, messages, params, deadline)
        if stage is None:
            out.stopped = "deadline"
            return self._finish(out)
        self._score(out, stage, 0)
        out.stopped = "shadow"
        served = self._finish(out)
        # its own request id, so stage numbers never clash with the served call's; gold feedback
        # for the request grades it too (feedback.py)
        would = Cascade(shadow_id(out.request_id), out.version, out.lam, endpoint="shadow")

        async def run() -> None:
            with contextlib.suppress(BackendFailed, BadRequest):  # counted; nothing to serve
                await self._cascade(would, policy, messages, params, p, None, reuse=stage)
                answered = [s for s in would.stages if s.completion is not None]
                self.metrics.shadow(answered[-1].model if answered else "none",
                                    spent(served, self.panel), spent(would, self.panel))

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return served

    def _explorable(self, messages: list[Message], params: GenParams
                    ) -> Callable[[str], bool] | None:
        """What exploration may choose: models whose call could cost at most
        explore_max_cost at this prompt (one token per character) and max_tokens."""
        cap = self.explore_max_cost
        if cap is None:
            return None
        prompt = prompt_tokens(messages)
        return lambda m: m in self.panel.names and \
            call_bound(self.panel, m, prompt, params.max_tokens) <= cap

    def _limit(self, out: Cascade, p: Plan, model: str, messages: list[Message],
               params: GenParams) -> str | None:
        """Why `model` may not be called now (request_plan.Plan.stop_before: the prompt's tokens
        as the earlier calls reported them, one per character before any); 400 when even the
        first call could exceed max_cost."""
        reported = [s.completion.usage.prompt_tokens for s in out.stages
                    if s.completion is not None and s.completion.usage_reported]
        prompt = prompt_tokens(messages, reported)
        if not out.stages:
            first_call_fits(p, self.panel, model, prompt, params.max_tokens)
        return p.stop_before(self.panel, model, len(out.stages), spent(out, self.panel), prompt,
                             params.max_tokens)

    def _query(self, policy: Any, messages: list[Message]) -> list[float] | None:
        """The question's features (query.py) from the last user message, the version's prompt
        template stripped; None when there is no user text."""
        users = [m.content for m in messages if m.role == "user" and m.content]
        if not users:
            return None
        template = policy.meta.get("prompt_template")
        return query_features(question_of(users[-1], template)).tolist()

    @staticmethod
    def _next(policy: Any, stage: Stage, lam: float) -> str | None:
        """The model the policy calls next (after a failed call: the next one it allows)."""
        if stage.scored is not None:
            return stage.scored.decision.next_model
        return policy.after(lam, stage.model)

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
                # the backend's retries stay inside this same deadline (openai_compat.py)
                c = await self.backends[model].acomplete(messages, params,
                                                         time.monotonic() + timeout)
        except PromptTooLong as exc:  # the request does not fit: the caller's to fix, a 400
            raise BadRequest(f"{exc}; send a shorter prompt or a smaller max_tokens") from None
        except Exception as exc:  # any backend failure (BackendError, timeout, a crash) counts
            if isinstance(exc, TimeoutError) and left is not None and left < spec.timeout_s:
                return None
            return self._failed(model, spec.on_error, exc, time.perf_counter() - t0)
        dt = time.perf_counter() - t0
        self.metrics.backend_call(model, dt)
        return Stage(model, dt, completion=c)

    def _failed(self, model: str, on_error: str, exc: BaseException, dt: float) -> Stage:
        """Count the failure; 502 for on_error=fail, else a stage that records the error."""
        kind = "timeout" if isinstance(exc, TimeoutError) else "error"
        message = str(exc) or f"{type(exc).__name__} after {dt:.1f} s"
        self.metrics.backend_error(model, kind)
        if on_error == "fail":
            raise BackendFailed(f"backend {model!r} failed: {message}")
        return Stage(model, dt, error=message)

    def _score(self, out: Cascade, stage: Stage, index: int, explore: bool = False,
               eps: float = 0.0, allowed: Callable[[str], bool] | None = None) -> None:
        """Decide on the stage's answer (agree_prev from earlier answers), explore the route
        with probability `eps` (exploration.py), and log it with its propensity."""
        previous = [s.scored.prediction for s in out.stages if s.scored is not None]
        called = [s.model for s in out.stages if s.scored is not None]
        if not explore:
            out.stages.append(stage)
        c = stage.completion
        if c is None:
            return
        arr = token_arrays(c.tokens)
        length = c.usage.completion_tokens or None
        st = StageInput(stage.model, arr, c.response, c.finish_reason, length, previous, called,
                        tool_call=bool(c.tool_calls))
        s = self.engine.decide(out.version, st, out.lam)
        if eps > 0:
            d, stage.next_prob = explore_decision(s.decision, s.model, out.version.models, eps,
                                                  self._rng, allowed)
            s = dc_replace(s, decision=d)
        stage.scored = s
        decision = "explore" if explore else s.decision.decision
        self.metrics.decision(s.model, decision, s.p_correct)
        rec = decision_record(s, out.request_id, index, out.lam, stage.latency_s, c.response,
                              out.endpoint, self.max_chars,
                              (c.usage.prompt_tokens, c.usage.completion_tokens)
                              if c.usage_reported else (None, None),
                              None if explore else stage.propensity, stage.choice_eps)
        seq = self.log.submit(msgspec.structs.replace(rec, decision=decision) if explore else rec)
        if not explore:
            out.last_seq = seq

    @staticmethod
    def _stop(stage: Stage, nxt: str | None, index: int, limits: Limits,
              deadline: float | None) -> str:
        """Why the cascade stops after this stage ('' to go on to `nxt`)."""
        s = stage.scored
        if s is not None and s.decision.decision == "accept":
            return "accepted" if s.decision.reason != "last_model" else "last_model"
        if nxt is None:
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
