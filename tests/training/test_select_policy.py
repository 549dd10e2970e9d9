"""The cross-validated policy (training/select_policy.py) and the panel zoo it is developed on."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from confroute.cascade import CascadePolicy
from confroute.query import QUERY_FEATURES
from training.fit_cascade import cached_states, fit_cascade, replay_cascade
from training.policy_candidates import METHODS, route_row
from training.select_policy import choose, cross_validate, fit_selected
from training.zoo import PRICE_RATIO, draw_panel


def _calibrated(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A zoo panel's first n items with a p that is the item's true chance of being right for
    the graded models (so the test reads the policy, not the calibrator)."""
    panel = draw_panel(seed, n)
    conf = np.where(np.isfinite(panel.confidence), panel.confidence, -9.0)
    p = 1.0 / (1.0 + np.exp(-(conf - conf.mean(0)) / (conf.std(0) + 1e-9)))
    return p, panel.correct, panel.cost, panel.models


@pytest.fixture(scope="module")
def fitted() -> tuple[CascadePolicy, np.ndarray, np.ndarray, np.ndarray]:
    p, correct, cost, models = _calibrated(4, 240)
    pol = fit_selected(lambda j, _b: p[:, j], correct, cost, models, n_bootstrap=0)
    return pol, p, correct, cost


def test_zoo_is_deterministic_and_in_its_documented_ranges() -> None:
    a, b = draw_panel(7, 500), draw_panel(7, 500)
    assert np.array_equal(a.correct, b.correct) and np.array_equal(a.confidence, b.confidence)
    ratios, kinds, dearest_not_best = [], set(), 0
    for seed in range(60):
        z = draw_panel(seed, 400)
        assert 3 <= len(z.models) <= 6 and z.correct.shape == (400, len(z.models))
        assert np.all(np.diff(z.price) >= 0)
        ratios.append(z.price[-1] / z.price[0])
        kinds |= {k.split("(")[0] for k in z.kinds}
        dearest_not_best += int(z.target_accuracy[-1] < z.target_accuracy[-2])
        graded = [j for j, k in enumerate(z.kinds) if k.startswith("graded")]
        assert all(np.isneginf(z.confidence[:, j]).any() for j in graded)
    assert PRICE_RATIO[0] - 1e-9 <= min(ratios) and max(ratios) <= PRICE_RATIO[1] + 1e-9
    assert kinds == {"constant", "binary", "graded"} and 5 <= dearest_not_best <= 30
    # errors are correlated through the shared difficulty
    z = draw_panel(3, 4000)
    r = np.corrcoef(z.correct.T.astype(float))[np.triu_indices(len(z.models), 1)]
    assert r.min() > 0.05


def test_rows_are_monotone_in_lambda_and_say_where_they_come_from(
    fitted: tuple[CascadePolicy, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    pol = fitted[0]
    cost = np.array([r.cost for r in pol.rows])
    acc = np.array([r.accuracy for r in pol.rows])
    assert np.all(np.diff(cost) <= 1e-9) and np.all(np.diff(acc) <= 1e-9)
    assert {r.source for r in pol.rows} <= set(METHODS)
    assert [c["method"] for c in pol.meta["chosen"]] == [r.source for r in pol.rows]
    assert pol.meta["bags"] == 1 and pol.rows[0].lam == 0.0


@pytest.mark.parametrize("seed", [0, 2, 4, 13])
def test_lambda0_pays_above_the_best_single_model_only_for_more_accuracy(seed: int) -> None:
    """λ = 0's choice, out of fold: no dearer than the single model of highest accuracy, unless
    more accurate than it (with lambda0_se 1: by more than one standard error)."""
    p, correct, cost, models = _calibrated(seed, 300)
    stage = lambda j, _b: p[:, j]  # noqa: E731
    cands, acc, cst = cross_validate(stage, correct, cost, models, None, [0.0, 0.1, 0.3], 5, 0,
                                     bags=1)
    pick = choose(cands, acc, cst, [0.0, 0.1, 0.3])
    single = max((i for i, c in enumerate(cands) if c.method == "single"),
                 key=lambda i: (acc[i].mean(), -cst[i].mean()))
    d = acc[pick[0]] - acc[single]
    noise = d.std(ddof=1) / np.sqrt(d.size)
    assert cst[pick[0]].mean() <= cst[single].mean() + 1e-12 or d.mean() > 0
    assert d.mean() >= -noise - 1e-12  # and never clearly less accurate than that model
    strict = choose(cands, acc, cst, [0.0, 0.1, 0.3], lambda0_se=1.0)[0]  # 1 SE of gain to pay
    d = acc[strict] - acc[single]
    noise = d.std(ddof=1) / np.sqrt(d.size)
    assert cst[strict].mean() <= cst[single].mean() + 1e-12 or d.mean() > noise


@pytest.mark.parametrize("seed", [4, 11])
def test_above_lambda_0_the_rows_are_the_fitted_cascade_unless_dearer_than_the_row_before(
    seed: int,
) -> None:
    """With switching off, every λ > 0 serves the cascade fitted on all items at that λ, except
    where its cost on those items rises above the row before (then that row's rule): the noisier
    out-of-fold figures drop no stretch of the curve (zoo seed 11 lost its middle model so)."""
    p, correct, cost, models = _calibrated(seed, 300)
    stage = lambda j, _b: p[:, j]  # noqa: E731
    pol = fit_selected(stage, correct, cost, models, n_bootstrap=0)
    casc = fit_cascade(stage, correct, cost, models, n_bootstrap=0)
    states = lambda r: (r.start, r.states)  # noqa: E731
    spent = lambda r: replay_cascade(  # noqa: E731
        r, models, cached_states(stage), correct, cost, None, None).cost.mean()
    served = 0
    for k, (row, ref) in enumerate(zip(pol.rows, casc.rows, strict=True)):
        if k == 0:
            continue
        if states(row) == states(ref):
            served += 1
        else:  # the row before's rule, because the cascade at this λ costs more on these items
            assert states(row) == states(pol.rows[k - 1])
            assert spent(ref) > spent(pol.rows[k - 1]) + 1e-12
    assert served == len(pol.rows) - 1  # these panels' cascade rows never rise in cost


def test_a_rule_dearer_on_the_training_items_than_the_row_before_serves_that_row() -> None:
    """select_policy._monotone on made-up replays: costs 1, 2, 0.5 per item -> the second λ
    serves the first λ's rule; the third, cheaper, its own."""
    from training.fit_cascade import Replayed
    from training.select_policy import _monotone

    def out(c: float) -> Replayed:
        return Replayed(np.zeros(4, int), np.ones(4, bool), np.full(4, c), np.ones((4, 1), bool))

    picked, outs = _monotone([7, 8, 9], [out(1.0), out(2.0), out(0.5)])
    assert picked == [7, 7, 9] and [float(o.cost.mean()) for o in outs] == [1.0, 1.0, 0.5]


def test_a_free_equal_model_is_the_whole_answer_at_lambda_0() -> None:
    """Three models right on the same items, the cheapest 10x cheaper: λ = 0 calls it alone."""
    rng = np.random.default_rng(0)
    right = rng.random(200) < 0.6
    correct = np.column_stack([right] * 3)
    cost = np.tile([1.0, 3.0, 10.0], (200, 1))
    p = np.column_stack([rng.random(200)] * 3)  # confidence that says nothing
    pol = fit_selected(lambda j, _b: p[:, j], correct, cost, ["a", "b", "c"], n_bootstrap=0)
    row = pol.row(0.0)
    assert row.calls == {"a": 1.0, "b": 0.0, "c": 0.0} and row.cost == pytest.approx(0.1, rel=0.01)


def test_an_informative_cheap_model_is_cascaded_at_some_lambda() -> None:
    """A cheap model whose confidence separates right from wrong: some λ accepts its confident
    answers and escalates the rest (more than one model called on some items, not all)."""
    rng = np.random.default_rng(1)
    n = 300
    cheap_right = rng.random(n) < 0.6
    p0 = np.clip(np.where(cheap_right, 0.8, 0.2) + rng.normal(0, 0.1, n), 0, 1)
    correct = np.column_stack([cheap_right, rng.random(n) < 0.9])
    cost = np.tile([1.0, 20.0], (n, 1))
    p = np.column_stack([p0, np.full(n, 0.9)])
    pol = fit_selected(lambda j, _b: p[:, j], correct, cost, ["small", "big"], n_bootstrap=0)
    mixed = [r for r in pol.rows if 0.05 < r.calls["big"] < 0.95]
    assert mixed, [(r.lam, r.source, r.calls) for r in pol.rows]
    assert all(r.calls["small"] == 1.0 for r in mixed)
    for r in mixed:  # it is the unsure answers that go on, so the mix beats the small model alone
        kept = pol.decide("small", 0.9, r.lam).decision == "accept"
        sent = pol.decide("small", 0.1, r.lam).decision != "accept"
        assert kept and sent, (r.lam, r.source)
        assert r.accuracy > correct[:, 0].mean() + 0.05


def test_a_threshold_row_decides_in_the_service_as_it_replays(
    fitted: tuple[CascadePolicy, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """route_row through CascadePolicy.decide: accept iff p >= τ, the next route model else; the
    reason says whether the answer beat the models ahead on p or only on cost."""
    models = ["a", "b", "c"]
    row = route_row(0.2, [0, 2], [0.7], models, "thresholds")
    pol = CascadePolicy(tuple(models), (row,), {"single_accuracy": {"a": 0.5, "b": 0.6,
                                                                    "c": 0.8}})
    assert pol.first(0.2).model == "a"
    d = pol.decide("a", 0.69, 0.2)
    assert (d.decision, d.next_model, d.reason) == ("skip_ahead", "c", "not_confident")
    d = pol.decide("a", 0.75, 0.2)
    assert (d.decision, d.reason) == ("accept", "not_worth_escalating")
    assert d.values is not None and d.values["accept"] >= d.values["c"]
    assert pol.decide("a", 0.85, 0.2).reason == "confident"
    assert pol.decide("c", 0.1, 0.2, called=("a", "c")).reason == "last_model"
    assert pol.decide("a", math.nan, 0.2).decision == "skip_ahead"
    # the replay the fit and evaluate use agrees with decide item by item
    p = np.array([[0.69, 0.0, 0.3], [0.75, 0.0, 0.3], [0.9, 0.0, 0.3]])
    out = replay_cascade(row, models, lambda s: p[:, s[-1]], np.ones((3, 3), bool),
                         np.ones((3, 3)), None)
    assert list(out.answered_by) == [2, 0, 0]


def test_the_policy_round_trips_and_keeps_its_sources(
    fitted: tuple[CascadePolicy, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    pol = fitted[0]
    again = CascadePolicy.from_dict(pol.to_dict())
    assert [r.source for r in again.rows] == [r.source for r in pol.rows]
    assert again.first(0.5).model == pol.first(0.5).model
    models = ["a", "b", "c"]
    rows = (route_row(0.0, [0, 2], [0.7], models, "thresholds"),
            route_row(0.5, [1], [], models, "single"))
    mixed = CascadePolicy(tuple(models), rows).to_dict()
    assert [r.source for r in CascadePolicy.from_dict(mixed).rows] == ["thresholds", "single"]


def test_the_shipped_version_reads_lambda_right_on_every_reference_question() -> None:
    """λ up, cost down: the shipped policy's rows (cost and accuracy non-increasing) and, for
    every one of the 1,400 shipped questions, its first model (never dearer at a higher λ)."""
    import json
    from pathlib import Path

    from confroute.panel import load_panel
    from confroute.policies import load_policy
    from confroute.traces import read_traces
    from training.table import QUERY_COLUMNS, build_table

    root = Path(__file__).parents[2]
    manifest = json.loads((root / "models/current/manifest.json").read_text())
    pol = load_policy(manifest["policy"])
    cost = np.array([r.cost for r in pol.rows])
    acc = np.array([r.accuracy for r in pol.rows])
    assert np.all(np.diff(cost) <= 1e-9) and np.all(np.diff(acc) <= 1e-9)
    panel = load_panel(root / "configs/panel.cpu.yaml")
    table = build_table(read_traces([root / "data/reference-traces"]), panel)
    questions = table.drop_duplicates("item_id")[list(QUERY_COLUMNS)].to_numpy(float)
    assert len(questions) == 1400
    pos = {m: i for i, m in enumerate(pol.models)}
    for x in questions:
        seq = [pos[pol.first(lam, list(x)).model] for lam in pol.lambdas]
        assert seq == sorted(seq, reverse=True), (list(x), seq)


def test_a_first_model_that_would_get_dearer_with_lambda_is_capped() -> None:
    """Start lines fitted apart at two λ that cross: the higher λ keeps the lower λ's cheaper
    first model, says so, and evaluate's replay does the same."""
    from confroute.cascade import CascadeRow
    from training.fit_cascade import first_models

    models = ("a", "b")
    zeros = [0.0] * (len(QUERY_FEATURES) - 1)
    low = route_row(0.0, [0, 1], [0.5], list(models), "cascade")
    low = CascadeRow(0.0, {"a": (0.0, 1.0, *zeros), "b": (0.5, 0.0, *zeros)}, low.states, 0.8, 1.0)
    high = CascadeRow(0.5, {"a": (0.5, 0.0, *zeros), "b": (0.0, 1.0, *zeros)}, low.states, 0.7, 0.5)
    pol = CascadePolicy(models, (low, high, replace(high, lam=1.0)), {"query_range": None})
    x = [1.0, *zeros]  # row 0: a 1.0 > b 0.5 -> a; row 0.5 alone: b 1.0 > a 0.5 -> b
    assert pol.first(0.0, x).model == "a"
    capped = pol.first(0.5, x)
    assert capped.model == "a" and capped.reason == "query_features_capped_by_lower_lambda"
    assert pol.first(1.0, x).reason == "query_features_capped_by_lower_lambda"  # said once
    assert pol.first(0.5, [0.0, *zeros]).model == "a"  # no crossing: its own choice, a
    q = np.array([x, [0.0, *zeros]])
    assert list(first_models(high, list(models), q, None, 2)) == [1, 0]  # the row alone
    from training.eval_arrays import EvalArrays
    from training.evaluate import cascade_curve

    nan = np.full((2, 2), np.nan)
    a = EvalArrays(list(models), ["0", "1"], np.full((2, 2), 0.9), np.ones((2, 2), bool),
                   np.ones((2, 2)), nan, nan, query=q)
    at_high = cascade_curve(a, pol, 1.0).points[1]
    assert at_high["calls"] == {"a": 1.0, "b": 0.0}  # both start on a, as the service does


def test_the_zoo_bench_writes_the_summary_the_issue_names() -> None:
    """bench/panel_zoo.py on two small panels: every summary field, each a number in range."""
    from bench.panel_zoo import one_panel, summarise

    rows = [one_panel(seed, 60) for seed in (5, 6)]
    s = summarise(rows)
    for key in ("panels", "share_not_below_threshold", "mean_gain_vs_threshold",
                "mean_gap_to_tuned", "median_cost_ratio_to_tuned",
                "max_lambda0_cost_over_strongest"):
        assert key in s and s[key] == s[key], key  # present and not NaN
    assert s["panels"] == 2 and 0.0 <= s["share_not_below_threshold"] <= 1.0
    assert s["max_lambda0_cost_over_strongest"] > 0
    for r in rows:  # the router's curve is what the policy fitted on the 60 questions serves
        assert len(r["chosen"]) == 21 and set(r["chosen"]) <= set(METHODS)
        assert r["apgr"]["oracle"] >= r["apgr"]["router"] - 1e-9
