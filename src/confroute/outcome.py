"""One request's cascade as it ran: each model called (its answer, decision, propensity or
error), what was served and why it stopped, and what the calls cost. The runner fills it in
(runner.py); the chat reply, the trace spans and the shadow metrics read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confroute.backends import Completion
from confroute.engine import Scored
from confroute.panel import Panel
from confroute.policy_api import Start
from confroute.versions import RouterVersion


@dataclass
class Stage:
    """One model called for a request: its answer and decision, or its error."""

    model: str
    latency_s: float
    completion: Completion | None = None
    scored: Scored | None = None
    error: str | None = None
    propensity: float | None = None  # P(this call | the state before it), logged
    choice_eps: float = 0.0  # the route-exploration ε that choice was drawn with
    next_prob: float = 1.0  # P(the choice made after its answer)


@dataclass
class Cascade:
    """The outcome of one chat request."""

    request_id: str
    version: RouterVersion
    lam: float
    stages: list[Stage] = field(default_factory=list)
    served: Stage | None = None
    start: Start | None = None  # the policy's first choice and its utilities
    stopped: str = ""  # accepted | last_model | max_escalations | max_models | max_cost |
    # deadline | fallback | shadow
    endpoint: str = "chat"  # what its decision-log records say: chat, or shadow (would-be)
    last_seq: int = 0  # the decision log's number of its last record (the reply waits on it)
    target: dict[str, Any] | None = None  # target_accuracy: the λ chosen and its estimate


def usage(out: Cascade) -> dict[str, int]:
    """Tokens over every stage called (what the request consumed)."""
    done = [s.completion for s in out.stages if s.completion is not None]
    p = sum(c.usage.prompt_tokens for c in done)
    c = sum(c.usage.completion_tokens for c in done)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def stage_cost(stage: Stage, panel: Panel) -> float:
    """What one call billed at the panel's prices (0 when it failed before answering)."""
    c = stage.completion
    return panel.get(stage.model).cost.of(c.usage.prompt_tokens, c.usage.completion_tokens) \
        if c is not None else 0.0


def spent(out: Cascade, panel: Panel) -> float:
    return sum(stage_cost(s, panel) for s in out.stages)


def stage_attributes(stage: Stage, panel: Panel) -> dict[str, Any]:
    """A stage span's attributes: the call's tokens and cost, the decision on its answer."""
    c, s = stage.completion, stage.scored
    return {"gen_ai.usage.input_tokens": c.usage.prompt_tokens if c else None,
            "gen_ai.usage.output_tokens": c.usage.completion_tokens if c else None,
            "confroute.p_correct": s.p_correct if s else None,
            "confroute.decision": s.decision.decision if s else "error",
            "confroute.reason": s.decision.reason if s else None,
            "confroute.cost": stage_cost(stage, panel), "confroute.error": stage.error,
            "confroute.latency_s": stage.latency_s}
