"""Off-policy evaluation (training/counterfactual.py) against ground truth on the reference
traces, and the propensities of route exploration (confroute/exploration.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from confroute.exploration import explore_decision, explore_first, mixed, options
from confroute.manifest import Manifest
from confroute.policies import load_policy
from confroute.policy_api import Decision, Start
from training.counterfactual import estimate, ground_truth_check, reference_arrays, simulate

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def shipped() -> tuple[object, object]:
    version = ROOT / "models" / "current"
    arrays = reference_arrays(version, [ROOT / "data" / "reference-traces"])
    return arrays, load_policy(Manifest.load(version).policy)


@pytest.mark.parametrize("log_lambda, target_lambda", [(0.3, 0.5), (0.5, 0.3)])
def test_a_logged_policy_estimates_another_within_its_intervals(
    shipped: tuple[object, object], log_lambda: float, target_lambda: float,
) -> None:
    """The shipped policy served at one λ with route exploration ε 0.5, 20 seeds: the doubly
    robust intervals hold the other λ's true accuracy and cost (its replay on the same 417
    held-out items) in at least 19 of 20 seeds; the policies differ, so this is not a replay."""
    arrays, policy = shipped
    r = ground_truth_check(arrays, policy, log_lambda, target_lambda, 0.5, range(20), n_boot=300)
    held = r["intervals_holding_truth"]
    assert held["accuracy_dr"] >= 19 and held["cost_dr"] >= 19, held
    other_lam = ground_truth_check(arrays, policy, log_lambda, log_lambda, 0.0, [0], n_boot=50)
    wrong = other_lam["truth"]["accuracy"]  # the logging λ's own accuracy: intervals that held
    excluded = sum(not (row["estimates"]["accuracy"]["dr"]["ci95"][0] <= wrong
                        <= row["estimates"]["accuracy"]["dr"]["ci95"][1]) for row in r["per_seed"])
    assert excluded >= 19  # it too would mean nothing: the intervals are informative
    assert held["accuracy_snips"] >= 18 and held["cost_snips"] >= 18, held
    assert all(row["ess"] > 30 for row in r["per_seed"])
    other = ground_truth_check(arrays, policy, log_lambda, log_lambda, 0.0, [0], n_boot=50)
    assert other["truth"] != r["truth"]  # the two λ really route differently


def test_without_exploration_the_log_does_not_cover_another_policy(
    shipped: tuple[object, object],
) -> None:
    arrays, policy = shipped
    a = arrays
    rel = a.cost / float(a.cost[:, -1].mean())
    log = simulate(policy, 0.3, list(a.models), a.p_after, a.correct, rel, a.query, 0.0, 0)
    assert all(p == 1.0 for ep in log for p in ep.propensity)
    same = estimate(log, policy, 0.3, n_boot=50)
    assert same["covered"] and same["matched"] == len(log)  # itself: every request observed
    other = estimate(log, policy, 0.5, n_boot=50)
    assert not other["covered"] and other["coverage"] < 1.0


def test_propensities_are_a_distribution_over_what_could_be_chosen() -> None:
    assert mixed("b", "b", 3, 0.6) == pytest.approx(0.4 + 0.2)
    assert mixed("c", "b", 3, 0.6) == pytest.approx(0.2)
    for policy_choice in options("a", MODELS):
        total = sum(mixed(c, policy_choice, 3, 0.3) for c in options("a", MODELS))
        assert total == pytest.approx(1.0)
    rng = random.Random(0)
    start, p = explore_first(Start("b", {}, "query_features"), MODELS, 0.0, rng)
    assert (start.model, p) == ("b", 1.0)
    seen: dict[str, float] = {}
    d = Decision("escalate", 0.6, "b", "not_confident")
    for _ in range(2000):
        got, p = explore_decision(d, "a", MODELS, 0.6, rng)
        key = "accept" if got.decision == "accept" else str(got.next_model)
        seen[key] = seen.get(key, 0) + 1 / 2000
        assert p == pytest.approx(mixed(key, "b", 3, 0.6))
        assert (got.reason == "explored") == (key != "b")
        assert got.decision == {"accept": "accept", "b": "escalate", "c": "skip_ahead"}[key]
    for key in ("accept", "b", "c"):  # the frequencies follow the propensities
        assert seen[key] == pytest.approx(mixed(key, "b", 3, 0.6), abs=0.04)
    last, p = explore_decision(Decision("accept", None, None, "last_model"), "c", MODELS, 0.9, rng)
    assert (last.decision, p) == ("accept", 1.0)  # nothing could follow the last model


def test_exploration_never_picks_a_model_beyond_the_cost_cap() -> None:
    """`allowed` (the service: CONFROUTE_EXPLORE_ROUTE_MAX_COST) removes the dear model from
    what exploration may draw; the policy's own choice stays, and propensities are over the
    candidates that remain."""
    rng = random.Random(1)
    cheap = lambda m: m != "c"  # noqa: E731
    for _ in range(300):
        s, p = explore_first(Start("a", {}, "query_features"), MODELS, 1.0, rng, cheap)
        assert s.model in ("a", "b") and p == pytest.approx(1 / 2)
        d, p = explore_decision(Decision("accept", 0.5, None, "confident"), "a", MODELS, 1.0,
                                rng, cheap)
        assert d.next_model != "c" and p == pytest.approx(1 / 2)
    drawn = set()
    for _ in range(300):  # the policy's own dear choice stays a candidate
        own, p = explore_first(Start("c", {}, "query_features"), MODELS, 1.0, rng, cheap)
        drawn.add(own.model)
        assert p == pytest.approx(1 / 3)
    assert drawn == {"a", "b", "c"}
