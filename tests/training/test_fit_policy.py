"""fit_policy: thresholds and routes on constructed cases whose optimum is known by hand."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from training.fit_policy import fit_policy, replay


def _separable(n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model 0 right on half the items with p in [0.8, 0.9], wrong with p in [0.1, 0.3]; model 1
    always right at 10x the cost. n <= n_candidates, so the threshold grid is every observed p."""
    rng = np.random.default_rng(0)
    right0 = np.arange(n) < n // 2
    p0 = np.where(right0, rng.uniform(0.8, 0.9, n), rng.uniform(0.1, 0.3, n))
    p = np.column_stack([p0, rng.uniform(0, 1, n)])
    correct = np.column_stack([right0, np.ones(n, bool)])
    cost = np.column_stack([np.ones(n), np.full(n, 10.0)])
    return p, correct, cost


def _random(n: int = 1000, m: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    correct = rng.uniform(size=(n, m)) < np.linspace(0.3, 0.8, m)
    p = np.where(correct, rng.beta(4, 2, (n, m)), rng.beta(2, 4, (n, m)))
    p[rng.uniform(size=(n, m)) < 0.03] = np.nan
    cost = np.geomspace(1, 8, m) * rng.uniform(0.5, 1.5, (n, m))
    return p, correct, cost


def test_threshold_falls_between_the_classes_when_p_separates_them() -> None:
    p, correct, cost = _separable()
    pol = fit_policy(p, correct, cost, ["a", "b"], lambdas=[0.0, 0.5, 1.0])
    q = pol.row(0.0)
    assert q.route == ("a", "b")
    assert p[~correct[:, 0], 0].max() < q.thresholds["a"] <= p[correct[:, 0], 0].min()
    assert q.accuracy == 1.0
    assert q.cost == pytest.approx((1 + 0.5 * 10) / 10)
    assert pol.row(1.0).route == ("a",)  # cost only: the cheapest model alone
    assert pol.row(1.0).cost == pytest.approx(0.1)


def test_quality_only_with_an_uninformative_cheap_model_always_escalates() -> None:
    p, correct, cost = _separable()
    p[:, 0] = 0.5  # no information: accepting any of model 0's answers loses accuracy
    row = fit_policy(p, correct, cost, ["a", "b"], lambdas=[0.0]).row(0.0)
    assert row.route == ("b",)
    assert (row.accuracy, row.cost) == (1.0, 1.0)


def test_a_middle_model_that_is_never_right_is_skipped() -> None:
    p, correct, cost = _random(n=400, m=3, seed=1)
    correct[:, 1] = False
    pol = fit_policy(p, correct, cost, ["a", "b", "c"])
    assert all("b" not in r.route for r in pol.rows)
    assert any(r.route == ("a", "c") for r in pol.rows)


def test_route_p_scores_a_route_that_skips_a_cheaper_model_as_the_service_would() -> None:
    """b's p separates its classes only with a's answer to agree with (agree_prev)."""
    n = 40
    right_b = np.arange(n) < n // 2
    p = np.column_stack([np.full(n, 0.1), np.where(right_b, 0.9, 0.2), np.full(n, 0.5)])
    correct = np.column_stack([np.zeros(n, bool), right_b, np.ones(n, bool)])
    cost = np.tile([1.0, 2.0, 10.0], (n, 1))

    def route_p(route: Sequence[int]) -> np.ndarray:
        q = p.copy()
        if 0 not in route:
            q[:, 1] = 0.5  # without a's answer, b's p says nothing
        return q

    naive = fit_policy(p, correct, cost, ["a", "b", "c"], lambdas=[0.0]).row(0.0)
    assert (naive.route, naive.cost) == (("b", "c"), pytest.approx(0.7))
    exact = fit_policy(p, correct, cost, ["a", "b", "c"], lambdas=[0.0], route_p=route_p)
    assert exact.row(0.0).route == ("a", "b", "c")
    assert (exact.row(0.0).accuracy, exact.row(0.0).cost) == (1.0, pytest.approx(0.8))


def test_cost_and_accuracy_fall_with_lambda_and_fitting_is_fast() -> None:
    p, correct, cost = _random()
    start = time.perf_counter()
    pol = fit_policy(p, correct, cost, ["a", "b", "c"], n_bootstrap=200)
    assert time.perf_counter() - start < 2.0
    costs, accs = np.array([r.cost for r in pol.rows]), np.array([r.accuracy for r in pol.rows])
    assert len(pol.rows) == 21
    assert np.all(np.diff(costs) <= 1e-12) and np.all(np.diff(accs) <= 1e-12)
    assert costs[0] > costs[-1]
    for r in pol.rows:
        assert r.accuracy_ci is not None and r.accuracy_ci[0] <= r.accuracy <= r.accuracy_ci[1]


def test_replay_agrees_with_policy_decide_item_by_item() -> None:
    p, correct, cost = _random(n=300, seed=2)
    models = ["a", "b", "c"]
    pol = fit_policy(p, correct, cost, models, lambdas=[0.3], n_bootstrap=0)
    row = pol.row(0.3)
    route = [models.index(m) for m in row.route]
    out = replay(p, correct, cost, route, [row.thresholds[m] for m in row.route[:-1]])
    for i in range(p.shape[0]):
        for j in route:
            if pol.decide(models[j], p[i, j], 0.3).decision == "accept":
                assert out.answered_by[i] == j
                break
    assert row.accuracy == pytest.approx(out.correct.mean())


def test_target_accuracy_on_a_fitted_policy() -> None:
    p, correct, cost = _random()
    pol = fit_policy(p, correct, cost, ["a", "b", "c"])
    target = (pol.rows[0].accuracy + pol.rows[-1].accuracy) / 2
    lam, row = pol.for_target_accuracy(target)
    assert row.accuracy >= target
    assert all(r.cost >= row.cost for r in pol.rows if r.accuracy >= target)
    assert lam == row.lam


@pytest.mark.parametrize("bad", ["shape", "p_range", "cost", "lambda"])
def test_bad_input_is_a_value_error(bad: str) -> None:
    p, correct, cost = _random(n=20)
    kwargs: dict = {"lambdas": [2.0]} if bad == "lambda" else {}
    if bad == "shape":
        correct = correct[:, :2]
    elif bad == "p_range":
        p[0, 0] = 1.5
    elif bad == "cost":
        cost[0, 0] = -1
    with pytest.raises(ValueError):
        fit_policy(p, correct, cost, ["a", "b", "c"], **kwargs)
