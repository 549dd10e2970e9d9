"""Policy table: decisions, λ lookup, JSON round trip, target-accuracy mode, bad tables refused."""

from __future__ import annotations

import json
import math

import pytest

from confroute.policy import PolicyRow, ThresholdPolicy

MODELS = ("small", "mid", "large")


def _policy() -> ThresholdPolicy:
    rows = (
        PolicyRow(0.0, MODELS, {"small": 0.9, "mid": 0.8}, 0.80, 1.10, (0.76, 0.84), 500),
        PolicyRow(0.5, ("small", "large"), {"small": 0.6}, 0.70, 0.55, (0.66, 0.74), 500),
        PolicyRow(1.0, ("small",), {}, 0.40, 0.10, (0.36, 0.44), 500),
    )
    return ThresholdPolicy(MODELS, rows)


def test_decide_accepts_escalates_and_stops_at_the_last_route_model() -> None:
    pol = _policy()
    assert pol.decide("small", 0.95, 0.0).decision == "accept"
    esc = pol.decide("small", 0.5, 0.0)
    assert (esc.decision, esc.threshold, esc.next_model, esc.reason) == (
        "escalate", 0.9, "mid", "not_confident")
    assert pol.decide("small", 0.6, 0.5).decision == "accept"  # p == τ accepts
    last = pol.decide("large", 0.01, 0.0)
    assert (last.decision, last.reason, last.next_model) == ("accept", "last_model", None)
    assert pol.decide("small", float("nan"), 1.0).reason == "last_model"


def test_no_logprobs_escalates_and_a_model_off_the_route_is_skipped() -> None:
    pol = _policy()
    nan = pol.decide("small", float("nan"), 0.5)
    assert (nan.decision, nan.reason, nan.next_model) == ("escalate", "no_logprobs", "large")
    skip = pol.decide("mid", 0.99, 0.5)
    assert (skip.decision, skip.next_model, skip.reason) == ("skip", "large", "not_in_route")
    assert pol.decide("large", 0.99, 1.0).next_model is None


def test_lambda_lookup_is_nearest_with_ties_to_the_lower_and_validated() -> None:
    pol = _policy()
    assert pol.route(0.2) == list(MODELS)
    assert pol.route(0.25) == list(MODELS)  # tie between 0 and 0.5: the quality side
    assert pol.route(0.3) == ["small", "large"]
    assert pol.route(0.75) == ["small", "large"]  # 0.75 - 0.5 == 1 - 0.75
    assert pol.thresholds(0.9) == {}
    for bad in (-0.1, 1.01, math.nan):
        with pytest.raises(ValueError, match="cost_quality_tradeoff"):
            pol.decide("small", 0.5, bad)
    with pytest.raises(ValueError, match="not in the policy"):
        pol.decide("huge", 0.5, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pol.decide("small", 1.5, 0.0)


def test_round_trip_through_json() -> None:
    pol = _policy()
    again = ThresholdPolicy.from_dict(json.loads(json.dumps(pol.to_dict())))
    assert again == pol
    assert again.lambdas == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("change", [
    {"route": ["large", "small"]},  # not in panel order
    {"route": ["small", "nope"]},
    {"thresholds": {}},  # missing τ for a non-final model
    {"thresholds": {"small": float("inf")}},
])
def test_from_dict_refuses_a_bad_row(change: dict) -> None:
    d = _policy().to_dict()
    d["rows"][1].update(change)
    with pytest.raises(ValueError):
        ThresholdPolicy.from_dict(d)


def test_from_dict_refuses_unknown_format_and_unsorted_grid() -> None:
    d = _policy().to_dict()
    with pytest.raises(ValueError, match="format"):
        ThresholdPolicy.from_dict({**d, "format": 99})
    with pytest.raises(ValueError, match="increasing"):
        ThresholdPolicy.from_dict({**d, "rows": d["rows"][::-1]})
    with pytest.raises(ValueError, match="malformed"):
        ThresholdPolicy.from_dict({"format": 1, "models": list(MODELS)})


def test_target_accuracy_picks_the_cheapest_row_reaching_it() -> None:
    pol = _policy()
    assert pol.for_target_accuracy(0.7)[0] == 0.5
    assert pol.for_target_accuracy(0.7, conservative=True)[0] == 0.0  # 0.66 lower bound < 0.7
    assert pol.for_target_accuracy(0.1)[1].route == ("small",)
    with pytest.raises(ValueError, match=r"best held-out accuracy is 0\.800"):
        pol.for_target_accuracy(0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pol.for_target_accuracy(1.2)
