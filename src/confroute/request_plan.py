"""One request's plan: the λ it is decided at (or the λ its target accuracy picks), its limits,
and the one bound on what the next call may cost. `/v1/route` (service/route.py) and the chat
runner (runner.py) both build a `Plan` and ask it the same question before any further call, so
a limit means the same on both endpoints.

The cost bound of a call not yet made: the model's per-call price, its prompt price at the
prompt's tokens, and its completion price at `max_tokens`. The prompt's tokens are the count a
backend reported for this prompt when one did (an earlier stage's usage, or the usage a /v1/route
caller sent); before any call the chat runner counts one token per character, an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confroute.errors import BadRequest
from confroute.looper import Budget
from confroute.panel import Panel
from confroute.traces import Message


@dataclass(frozen=True)
class Limits:
    """What a request allows beyond its λ (any None: no limit)."""

    max_escalations: int | None = None
    deadline_s: float | None = None
    max_cost: float | None = None  # panel price units; a call that could exceed it is not made
    max_models: int | None = None

    def with_budget(self, budget: Budget | None) -> Limits:
        """These limits, a router config's budget where the request set none."""
        if budget is None:
            return self
        return Limits(self.max_escalations,
                      self.deadline_s if self.deadline_s is not None else budget.max_wall_time_s,
                      self.max_cost if self.max_cost is not None else budget.max_cost,
                      self.max_models if self.max_models is not None else budget.max_models)


@dataclass(frozen=True)
class Plan:
    """How one request is decided: at `lam`, within `limits`."""

    lam: float
    limits: Limits = Limits()
    target: dict[str, Any] | None = None  # target_accuracy: the λ chosen and its estimate

    def stop_before(self, panel: Panel | None, model: str, calls: int, spent: float,
                    prompt_tokens: int, max_tokens: int) -> str | None:
        """`max_models` or `max_cost` when calling `model` now, after `calls` calls that cost
        `spent`, could break a limit; None when the call may be made."""
        lim = self.limits
        if lim.max_models is not None and calls >= lim.max_models:
            return "max_models"
        if lim.max_cost is not None and panel is not None and model in panel.names and \
                spent + call_bound(panel, model, prompt_tokens, max_tokens) > lim.max_cost:
            return "max_cost"
        return None


def plan(engine: Any, version: Any, lam: float | None, target_accuracy: float | None,
         limits: Limits = Limits(), budget: Budget | None = None) -> Plan:
    """The request's Plan: λ as given (checked; the service default when None), or the cheapest
    λ whose fitted accuracy reaches `target_accuracy` (400 naming the best reachable when none
    does); the limits with the router config's budget filled in. `engine`: confroute.engine's
    Engine (typed loosely: the engine imports nothing from here)."""
    chosen, target = engine.lam(lam), None
    if target_accuracy is not None:
        chosen, target = engine.for_target(version, target_accuracy)
    return Plan(chosen, limits.with_budget(budget), target)


def call_bound(panel: Panel, model: str, prompt_tokens: int, max_tokens: int) -> float:
    """The most one call of `model` can bill (module docstring)."""
    return panel.get(model).cost.of(prompt_tokens, max_tokens)


def prompt_tokens(messages: Sequence[Message], reported: Sequence[int] = ()) -> int:
    """The prompt's tokens for a cost bound: the largest count a backend reported for it, else
    one token per character of the messages (an upper bound for every tokenizer here)."""
    counted = [n for n in reported if n > 0]
    return max(counted) if counted else sum(len(m.content or "") for m in messages)


def first_call_fits(plan_: Plan, panel: Panel, model: str, prompt: int, max_tokens: int) -> None:
    """400 when even the first call could cost more than the request's max_cost (nothing would
    be served): the caller's to fix."""
    if plan_.stop_before(panel, model, 0, 0.0, prompt, max_tokens) == "max_cost":
        bound = call_bound(panel, model, prompt, max_tokens)
        raise BadRequest(f"max_cost {plan_.limits.max_cost:g} is below the price of calling "
                         f"{model!r} (up to {bound:g} for this prompt and max_tokens "
                         f"{max_tokens}); raise max_cost or lower max_tokens")
