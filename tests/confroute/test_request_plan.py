"""One request's plan (request_plan.py): λ or target accuracy, the limits, one cost bound."""

from __future__ import annotations

import pytest

from confroute.errors import BadRequest
from confroute.looper import Budget
from confroute.panel import Cost, LlamaCppModel, Panel
from confroute.request_plan import (
    Limits,
    Plan,
    call_bound,
    first_call_fits,
    plan,
    prompt_tokens,
)
from confroute.traces import Message

PANEL = Panel(name="p", models=[
    LlamaCppModel(name="small", cost=Cost(per_call=1.0, per_1k_prompt_tokens=1.0)),
    LlamaCppModel(name="large", cost=Cost(per_call=3.0, per_1k_completion_tokens=10.0))])


def test_the_bound_prices_the_prompt_and_max_tokens() -> None:
    assert call_bound(PANEL, "small", 500, 64) == pytest.approx(1.5)
    assert call_bound(PANEL, "large", 500, 100) == pytest.approx(4.0)


def test_prompt_tokens_as_reported_else_one_per_character() -> None:
    msgs = [Message("system", "be brief"), Message("user", "2 + 2?")]
    assert prompt_tokens(msgs) == len("be brief") + len("2 + 2?")
    assert prompt_tokens(msgs, [0, 5, 4]) == 5  # the largest count a backend reported


@pytest.mark.parametrize("calls, spent, limits, want", [
    (1, 0.0, Limits(max_models=1), "max_models"),
    (1, 0.0, Limits(max_models=2), None),
    (1, 1.0, Limits(max_cost=4.0), None),  # 1 + 3 (+ 0 completion price at max_tokens 0)
    (1, 1.5, Limits(max_cost=4.0), "max_cost"),
    (5, 99.0, Limits(), None),  # no limit, no stop
])
def test_stop_before_says_which_limit_a_call_would_break(calls: int, spent: float,
                                                         limits: Limits, want: str | None) -> None:
    assert Plan(0.3, limits).stop_before(PANEL, "large", calls, spent, 0, 0) == want


def test_an_unpriced_model_or_no_panel_is_never_stopped_on_cost() -> None:
    p = Plan(0.3, Limits(max_cost=0.0))
    assert p.stop_before(None, "large", 1, 5.0, 0, 0) is None
    assert p.stop_before(PANEL, "not-in-panel", 1, 5.0, 0, 0) is None


def test_the_first_call_must_fit_or_the_request_is_a_400() -> None:
    first_call_fits(Plan(0.3, Limits(max_cost=1.5)), PANEL, "small", 100, 0)  # 1.1 fits
    with pytest.raises(BadRequest, match="max_cost 1 is below the price of calling 'small'"):
        first_call_fits(Plan(0.3, Limits(max_cost=1.0)), PANEL, "small", 100, 0)


class _Engine:
    """The two λ entry points of confroute.engine.Engine, recorded."""

    def lam(self, value: float | None) -> float:
        return 0.5 if value is None else value

    def for_target(self, version: object, target: float) -> tuple[float, dict]:
        return 0.1, {"target": target, "lambda": 0.1}


def test_plan_takes_lambda_or_the_target_and_fills_limits_from_the_budget() -> None:
    e = _Engine()
    assert plan(e, None, None, None).lam == 0.5
    assert plan(e, None, 0.7, None).lam == 0.7
    p = plan(e, None, 0.7, 0.9)
    assert (p.lam, p.target) == (0.1, {"target": 0.9, "lambda": 0.1})
    b = Budget(max_cost=2.0, max_models=3, max_wall_time_s=9.0)
    assert plan(e, None, None, None, Limits(max_models=1), b).limits == Limits(None, 9.0, 2.0, 1)
    assert plan(e, None, None, None, Limits(max_cost=1.0)).limits == Limits(max_cost=1.0)
