"""The policy kinds behind one protocol (policy_api.Policy), by name (policies.KINDS)."""

from __future__ import annotations

import json
import math

import pytest

from confroute.cascade import CascadePolicy
from confroute.features import FEATURE_NAMES
from confroute.formula import FormulaPolicy
from confroute.looper import Confidence
from confroute.policies import KINDS, kind_of, load_policy
from confroute.policy import PolicyRow, ThresholdPolicy
from confroute.policy_api import FittedPolicy, Policy
from tests.confroute.test_cascade import policy as cascade_policy

MODELS = ("small", "medium", "large")


def threshold_policy() -> ThresholdPolicy:
    return ThresholdPolicy(MODELS, (PolicyRow(0.0, MODELS, {"small": 0.8, "medium": 0.7}, 0.9, 1.0),
                                    PolicyRow(0.5, ("small", "large"), {"small": 0.5}, 0.8, 0.4)))


def formula_policy() -> FormulaPolicy:
    return FormulaPolicy(Confidence(confidence_method="hybrid", threshold=0.6), MODELS)


def _signals(avg_logprob: float, margin: float) -> list[float]:
    x = [0.0] * len(FEATURE_NAMES)
    x[FEATURE_NAMES.index("avg_logprob")], x[FEATURE_NAMES.index("margin")] = avg_logprob, margin
    return x


@pytest.mark.parametrize("make", [threshold_policy, cascade_policy, formula_policy])
def test_every_kind_is_a_policy_and_round_trips_by_its_name(make: object) -> None:
    pol = make()  # type: ignore[operator]
    assert isinstance(pol, Policy) and pol.kind in KINDS
    d = json.loads(json.dumps(pol.to_dict()))
    assert kind_of(d) == pol.kind
    again = KINDS[pol.kind](d)
    assert type(again) is type(pol) and again.to_dict() == pol.to_dict()
    for lam in (0.0, 0.5):  # the same first call and the same decisions after the round trip
        assert again.first(lam, [3.0, 1.0]) == pol.first(lam, [3.0, 1.0])
        for p in (0.1, 0.65, 0.95):
            x = _signals(-0.2, p * 4)
            a, b = again.judge(p, x), pol.judge(p, x)
            assert a == b and again.decide("small", a, lam) == pol.decide("small", b, lam)


def test_the_fitted_kinds_judge_p_and_the_formula_judges_the_signals() -> None:
    x = _signals(avg_logprob=0.0, margin=30.0)  # a formula score near 1
    assert threshold_policy().judge(0.2, x) == 0.2 and cascade_policy().judge(0.2, x) == 0.2
    f = formula_policy()
    assert f.judge(0.2, x) == pytest.approx(1.0, abs=1e-3)
    assert f.decide("small", f.judge(0.2, x), 0.3).decision == "accept"
    assert f.decide("small", f.judge(0.99, _signals(-3.0, 0.0)), 0.3).decision == "escalate"
    assert math.isnan(f.judge(0.5, _signals(math.nan, math.nan)))


def test_a_version_serves_fitted_kinds_only_and_old_tables_read_as_route_thresholds() -> None:
    old = threshold_policy().to_dict()
    del old["kind"]  # tables written before kinds were named
    got = load_policy(old)
    assert isinstance(got, ThresholdPolicy) and isinstance(got, FittedPolicy)
    assert isinstance(load_policy(cascade_policy().to_dict()), CascadePolicy)
    with pytest.raises(ValueError, match="built from a router config"):
        load_policy(formula_policy().to_dict())


@pytest.mark.parametrize("table, words, names_kinds", [
    ({"format": 3, "models": list(MODELS), "rows": []}, "format 3", True),
    ({"format": 2, "kind": "bandit", "rows": []}, "'bandit'", True),
    ({"format": 1, "kind": "cascade", "rows": []}, "not a cascade policy", False),
    ({"kind": "route_thresholds", "format": 1, "models": list(MODELS)}, "malformed", False),
])
def test_unknown_or_mislabelled_tables_are_refused(table: dict, words: str,
                                                   names_kinds: bool) -> None:
    with pytest.raises(ValueError, match=words) as err:
        load_policy(table)
    assert (str(sorted(KINDS)) in str(err.value)) == names_kinds


def test_a_table_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        load_policy([1, 2])  # type: ignore[arg-type]
