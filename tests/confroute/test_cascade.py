"""The cascade policy at run time: first choice, accept / escalate / skip ahead, the table's form."""

from __future__ import annotations

import json
import math

import pytest

from confroute.cascade import CascadePolicy, CascadeRow, State
from confroute.policies import load_policy

A, B, C = "small", "medium", "large"


def policy() -> CascadePolicy:
    """λ=0.5: after A, B is worth 0.3 and C 0.1 (accept iff 0.5 p >= 0.3: τ = 0.6); after A+B,
    C is worth 0.2 + 0.2 p. λ=0.8: after A, C is worth 0.1 (skip ahead below τ = 0.5). A start
    at C wins when the question holds 3 or more numbers."""
    def row(lam: float, after_a: dict[str, tuple[float, float]], tau: float) -> CascadeRow:
        states = {
            A: State((A,), after_a, tau, 0.2),
            f"{A}+{B}": State((A, B), {C: (0.2, 0.2)}, 0.2 / (1 - lam - 0.2), 0.5),
            B: State((B,), {C: (0.2, 0.2)}, 0.2 / (1 - lam - 0.2), 0.5),
            C: State((C,), {}, 0.0, 0.7), f"{A}+{C}": State((A, C), {}, 0.0, 0.7),
            f"{B}+{C}": State((B, C), {}, 0.0, 0.7),
            f"{A}+{B}+{C}": State((A, B, C), {}, 0.0, 0.7),
        }
        start = {A: (1.0, 0.0, 0.0), B: (0.0, 0.0, 0.0), C: (0.0, 0.0, 0.4)}
        return CascadeRow(lam, start, states, accuracy=0.8, cost=0.5, n_items=10)

    return CascadePolicy((A, B, C), (row(0.5, {B: (0.3, 0.0), C: (0.1, 0.0)}, 0.6),
                                     row(0.8, {B: (-0.5, 0.0), C: (0.1, 0.0)}, 0.5)),
                         {"query_mean": [4.0, 1.0]})


def test_accept_escalate_and_skip_ahead_by_expected_utility() -> None:
    p = policy()
    d = p.decide(A, 0.7, 0.5)
    assert (d.decision, d.reason, d.next_model, d.threshold) == ("accept", "confident", None, 0.6)
    assert d.values is not None and d.values["accept"] == pytest.approx(0.35)
    d = p.decide(A, 0.3, 0.5)
    assert (d.decision, d.next_model) == ("escalate", B)
    assert d.values == pytest.approx({B: 0.3, C: 0.1, "accept": 0.15})
    d = p.decide(A, 0.3, 0.8)
    assert (d.decision, d.next_model) == ("skip_ahead", C)  # B is not worth its cost at 0.8
    assert p.decide(A, 0.3, 0.75).decision == "skip_ahead"  # nearest grid λ (0.8)


def test_state_follows_the_models_called() -> None:
    p = policy()
    # after A and B, C is worth 0.2 + 0.2 p; accept iff 0.5 p >= that: p >= 2/3
    assert p.decide(B, 0.6, 0.5, called=[A, B]).decision == "escalate"
    assert p.decide(B, 0.7, 0.5, called=[A, B]).decision == "accept"
    d = p.decide(C, 0.01, 0.5, called=[A, C])
    assert (d.decision, d.reason) == ("accept", "last_model")  # nothing is left after C


def test_no_logprobs_never_accepts_while_a_model_is_left() -> None:
    d = policy().decide(A, math.nan, 0.5)
    assert (d.decision, d.reason, d.next_model) == ("escalate", "no_logprobs", B)
    assert policy().decide(C, math.nan, 0.5).decision == "accept"


def test_first_model_from_the_question() -> None:
    p = policy()
    assert p.first(0.5, [4.0, 1.0]).model == A  # 1.0 against 0.4
    start = p.first(0.5, [4.0, 3.0])
    assert start.model == C and start.values[C] == pytest.approx(1.2)  # straight to the big one
    assert p.first(0.5, None).reason == "no_question" and p.first(0.5, None).model == A
    assert p.first(0.5, [math.inf, 1.0]).reason == "no_question"


def test_round_trip_and_validation() -> None:
    p = policy()
    d = json.loads(json.dumps(p.to_dict()))
    q = load_policy(d)
    assert isinstance(q, CascadePolicy) and q.to_dict() == p.to_dict()
    assert q.route(0.5) == [A, B, C] and q.after(0.5, B) == C and q.after(0.5, C) is None
    bad = json.loads(json.dumps(d))
    bad["rows"][0]["states"][A]["options"][A] = [0.1, 0.0]  # an option back to itself
    with pytest.raises(ValueError, match="state 'small' has options"):
        load_policy(bad)
    bad = json.loads(json.dumps(d))
    bad["query_features"] = ["log_chars"]
    with pytest.raises(ValueError, match="query features"):
        load_policy(bad)
    bad = json.loads(json.dumps(d))
    del bad["rows"][0]["start"]
    with pytest.raises(ValueError, match="malformed cascade policy"):
        load_policy(bad)
    with pytest.raises(ValueError, match="not in the policy's panel"):
        p.decide("other", 0.5, 0.5)
    with pytest.raises(ValueError, match=r"p_correct must be in \[0, 1\]"):
        p.decide(A, 1.5, 0.5)


def test_target_accuracy_on_the_cascade_table() -> None:
    lam, row = policy().for_target_accuracy(0.8)
    assert row.accuracy == 0.8 and lam == 0.8  # same cost and accuracy: the higher λ
    with pytest.raises(ValueError, match=r"no setting reaches accuracy 0\.900"):
        policy().for_target_accuracy(0.9)
