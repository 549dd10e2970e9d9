"""What the decision log holds: one record per decision and per label, and what is read back.

The stores (store.py) write and read these; the log (log.py) queues them; training reads
`LoggedDecision` rows through `confroute.decisions`, never through the HTTP layer.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from confroute.features import FEATURE_NAMES
from confroute.panel import Panel

if TYPE_CHECKING:  # the engine's result type; the engine never imports the decision log
    from confroute.engine import Scored

SHADOW_SUFFIX = ":shadow"  # shadow mode logs a request's would-be stages under '<id>:shadow'


def shadow_id(request_id: str) -> str:
    """The request id a shadow-mode request's would-be stages are logged under (their stage
    numbers never clash with the served call's)."""
    return request_id + SHADOW_SUFFIX


class DecisionRecord(msgspec.Struct, tag="decision"):
    """One decision about one model's answer, as written to the log."""

    record_id: str
    request_id: str
    stage: int
    model: str
    signals: dict[str, float | None]  # by name (None: NaN), so a later build reads it by name
    p_correct: float | None
    threshold: float | None
    decision: str
    reason: str
    lam: float | None
    version: str
    latency_s: float
    created: float
    prediction: str | None = None
    response: str | None = None
    endpoint: str = "route"
    # the call's tokens as its server reported them (route: the request's `usage`), for cost
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # P(this call | the state before it) under the serving policy and the ε it was drawn with
    # (counterfactual evaluation, training/counterfactual.py); a /v1/route decision: None
    propensity: float | None = None
    choice_eps: float | None = None


class FeedbackRecord(msgspec.Struct, tag="feedback"):
    """A label for one stage of a request."""

    request_id: str
    stage: int
    correct: bool
    created: float
    gold: str | None = None


Record = DecisionRecord | FeedbackRecord


class LoggedDecision(msgspec.Struct, frozen=True):
    """A decision read back, with its feedback joined (correct/gold None when unlabeled)."""

    request_id: str
    stage: int
    model: str
    # by name, NaN where undefined; a signal the logging build did not have is absent (a log
    # written before signals were named holds FEATURE_NAMES order: see store.py)
    signals: dict[str, float]
    p_correct: float
    threshold: float | None
    decision: str
    reason: str
    lam: float | None
    version: str
    latency_s: float
    created: float
    prediction: str | None
    response: str | None
    endpoint: str
    correct: bool | None
    gold: str | None
    prompt_tokens: int | None = None  # None: not reported, or logged before tokens were
    completion_tokens: int | None = None
    propensity: float | None = None  # None: a /v1/route decision, or logged before it was
    choice_eps: float | None = None


class StageInfo(msgspec.Struct, frozen=True):
    """What feedback needs to know about one logged stage."""

    stage: int
    model: str
    decision: str
    prediction: str | None


class _Staged(Protocol):
    @property
    def decision(self) -> str: ...


S = TypeVar("S", bound=_Staged)


def served_stage(stages: Sequence[S]) -> S:
    """The stage whose answer was served: the last accepted one, else the last answered one
    (an explored answer is never served). Feedback and `confroute report traffic` both read it."""
    accepted = [s for s in stages if s.decision == "accept"]
    answered = [s for s in stages if s.decision not in ("error", "explore")]
    return (accepted or answered or list(stages))[-1]


def new_record_id() -> str:
    """A unique id per record: replaying a spill file twice writes each record once."""
    return uuid.uuid4().hex


def named_signals(s: Scored) -> dict[str, float | None]:
    """An answer's signals by name (None for NaN), as replies show and the log stores them."""
    return {n: None if math.isnan(v) else v
            for n, v in zip(FEATURE_NAMES, s.signals.tolist(), strict=True)}


def decision_record(s: Scored, request_id: str, stage: int, lam: float, latency_s: float,
           text: str | None, endpoint: str, max_chars: int,
           tokens: tuple[int | None, int | None] = (None, None),
           propensity: float | None = None, choice_eps: float | None = None) -> DecisionRecord:
    """The decision-log record of one decision (the route endpoint's and the runner's);
    `tokens`: the call's prompt and completion tokens, where known; `propensity`: P(this call)
    under the serving policy, with the exploration ε it was drawn with (chat only)."""
    signals = named_signals(s)
    p = None if math.isnan(s.p_correct) else s.p_correct
    return DecisionRecord(
        new_record_id(), request_id, stage, s.model, signals, p, s.decision.threshold,
        s.decision.decision, s.decision.reason, lam, s.version, latency_s, time.time(),
        s.prediction, text[:max_chars] if text and max_chars else None, endpoint, *tokens,
        propensity, choice_eps,
    )


def logged_tokens(d: LoggedDecision) -> tuple[int, int]:
    """(prompt, completion) tokens of one logged call: as the backend reported them, else its
    `length` signal and no prompt tokens (logs written before tokens were)."""
    if d.completion_tokens is not None:
        return d.prompt_tokens or 0, d.completion_tokens
    length = d.signals.get("length")
    return 0, 0 if length is None or not math.isfinite(length) else int(length)


def logged_cost(d: LoggedDecision, panel: Panel) -> float:
    """The panel's price of one logged call (0 for a model outside the panel). The one cost of a
    logged call: the traffic report and the retraining rows both read it."""
    if d.model not in panel.names:
        return 0.0
    return panel.get(d.model).cost.of(*logged_tokens(d))
