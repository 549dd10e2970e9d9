"""The traffic report's cost: each call priced with its reported tokens, else its length."""

from __future__ import annotations

import math

import pytest

from confroute.decisions.records import LoggedDecision
from confroute.decisions.records import logged_cost as stage_cost
from confroute.panel import Cost, LlamaCppModel, Panel
from training.traffic import traffic_report

PANEL = Panel(name="p", models=[
    LlamaCppModel(name="small", cost=Cost(per_call=0.5, per_1k_prompt_tokens=10.0,
                                          per_1k_completion_tokens=100.0)),
    LlamaCppModel(name="large", cost=Cost(per_call=2.0, per_1k_prompt_tokens=50.0,
                                          per_1k_completion_tokens=400.0))])


def _row(rid: str, stage: int, model: str, decision: str, length: float,
         tokens: tuple[int | None, int | None]) -> LoggedDecision:
    return LoggedDecision(rid, stage, model, {"length": length}, 0.5, 0.5, decision, "x", 0.3,
                          "v", 0.01, 1.0, "7", "7", "chat", None, None, *tokens)


def test_calls_are_priced_with_their_tokens_and_older_rows_with_their_length() -> None:
    tokened = _row("a", 0, "small", "accept", 99.0, (200, 40))
    assert stage_cost(tokened, PANEL) == pytest.approx(0.5 + 2.0 + 4.0)  # length not read
    untokened = _row("b", 0, "small", "escalate", 30.0, (None, None))
    assert stage_cost(untokened, PANEL) == pytest.approx(0.5 + 3.0)  # no prompt tokens
    no_prompt = _row("b", 1, "large", "accept", 5.0, (None, 10))  # prompt unknown: 0 of them
    assert stage_cost(no_prompt, PANEL) == pytest.approx(2.0 + 4.0)
    assert stage_cost(_row("c", 0, "elsewhere", "accept", 9.0, (1, 1)), PANEL) == 0.0
    nan_length = _row("d", 0, "small", "accept", math.nan, (None, None))
    assert stage_cost(nan_length, PANEL) == pytest.approx(0.5)

    rep = traffic_report([tokened, untokened, no_prompt], PANEL)
    assert rep["requests"] == 2
    assert rep["cost"] == pytest.approx(6.5 + 3.5 + 6.0)
    assert rep["calls_without_tokens"] == 1
    assert "1 of 3 logged calls carry no tokens" in rep["cost_basis"]
    full = traffic_report([tokened], PANEL)
    assert full["calls_without_tokens"] == 0 and "carry no tokens" not in full["cost_basis"]
    assert rep["calls_outside_panel"] == {} == full["calls_outside_panel"]
    # a log from another panel: its calls are priced 0 here, and the report says so
    other = traffic_report([tokened, _row("e", 0, "elsewhere", "accept", 9.0, (1, 1)),
                            _row("f", 0, "elsewhere", "accept", 9.0, (1, 1))], PANEL)
    assert other["calls_outside_panel"] == {"elsewhere": 2}
