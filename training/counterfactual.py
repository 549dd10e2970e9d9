"""Off-policy evaluation: what another policy (a version, a λ) would have scored and cost on the
logged traffic, from the propensities the service logs (confroute.exploration).

A logged request is an episode: the models called in order, each with its propensity (P(that
call | the state before it) under the serving policy), p_correct, label and cost. A target policy
is walked along the episode with the logged p's. Its answer is observed when its calls are the
first K logged ones (the log went at least as far as it would have): its outcome is then that
K-th call's label and the first K calls' cost, and the episode's importance weight is
1 / (the product of those K propensities), the probability that the serving policy made exactly
those calls. Otherwise the weight is 0. Estimators (each with a 95% bootstrap interval over
episodes, and the effective sample size (Σw)² / Σw²):

- IPS: mean of w·r over every episode (unbiased where the log covers the target);
- SNIPS: Σ w·r / Σ w (self-normalised: a little biased, much less variance);
- DR: doubly robust with a direct model of r by the target's first model (cross-fitted over two
  halves): mean of q(x) + w·(r - q(x)).

Support: where the target leaves the logged route at a choice made with ε = 0 (no exploration),
the log could never have shown its outcome; `coverage` is the share of episodes where it could,
and the report says plainly when it is below 1. Live logs do not hold the question's features,
so a target's first model is its no-question start there (the simulation below has them).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from confroute.decisions.records import LoggedDecision, logged_cost
from confroute.exploration import explore_decision, explore_first
from confroute.panel import Panel
from training.fit_cascade import cached_states

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Episode:
    """One logged request: its calls in order, and per call what the log holds."""

    request_id: str
    calls: tuple[str, ...]
    propensity: tuple[float, ...]
    eps: float  # the route exploration ε its choices were drawn with
    p: tuple[float, ...]  # p_correct per call (NaN: no logprobs)
    correct: tuple[bool | None, ...]
    cost: tuple[float, ...]
    query: tuple[float, ...] | None = None  # question features, where known (simulation)

    @property
    def features(self) -> list[float] | None:
        """The question features as a policy's `first` takes them."""
        return list(self.query) if self.query is not None else None


def walk(policy: Any, lam: float, ep: Episode) -> tuple[str, int, bool]:
    """(first, K, observed): the target's first model, how many of the logged calls it makes
    before its answer stands, and whether the log shows it (its calls are the first K logged)."""
    first: str = policy.first(lam, ep.features).model
    model: str | None = first
    called: list[str] = []
    for k, logged in enumerate(ep.calls):
        if model != logged:
            return first, k, False
        called.append(logged)
        d = policy.decide(logged, ep.p[k], lam, called)
        if d.decision == "accept":
            return first, k + 1, True
        model = d.next_model
    return first, len(ep.calls), False  # it would call past the end of the logged route


def estimate(episodes: Sequence[Episode], policy: Any, lam: float, n_boot: int = 500,
             seed: int = 0) -> dict[str, Any]:
    """Accuracy and cost of `policy` at λ on the logged episodes (module docstring)."""
    n = len(episodes)
    if n == 0:
        raise ValueError("no logged chat request to evaluate on (with propensities and labels)")
    w, acc, cost, first = np.zeros(n), np.zeros(n), np.zeros(n), []
    covered = 0
    for i, ep in enumerate(episodes):
        start, k, seen = walk(policy, lam, ep)
        first.append(start)
        if seen:
            w[i] = 1.0 / math.prod(ep.propensity[:k])
            acc[i], cost[i] = float(bool(ep.correct[k - 1])), float(sum(ep.cost[:k]))
        covered += seen or ep.eps > 0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    out: dict[str, Any] = {"episodes": n, "matched": int((w > 0).sum()),
                           "coverage": covered / n,
                           "ess": float(w.sum() ** 2 / (w ** 2).sum()) if w.any() else 0.0}
    groups = np.array(first)
    halves = np.arange(n) % 2
    for name, r in (("accuracy", acc), ("cost", cost)):
        q = _direct(w, r, groups, halves)
        point = {"ips": _ips(w, r), "snips": _snips(w, r), "dr": _dr(w, r, q)}
        boots = {"ips": [_ips(w[j], r[j]) for j in idx], "snips": [_snips(w[j], r[j]) for j in idx],
                 "dr": [_dr(w[j], r[j], q[j]) for j in idx]}
        out[name] = {e: {"estimate": point[e], "ci95": [float(np.nanpercentile(boots[e], 2.5)),
                                                        float(np.nanpercentile(boots[e], 97.5))]}
                     for e in ESTIMATORS}
    out["covered"] = out["coverage"] >= 1.0 - 1e-12 and out["matched"] > 0
    return out


def _ips(w: np.ndarray, r: np.ndarray) -> float:
    return float((w * r).mean())


def _snips(w: np.ndarray, r: np.ndarray) -> float:
    return float((w * r).sum() / w.sum()) if w.sum() > 0 else math.nan


def _dr(w: np.ndarray, r: np.ndarray, q: np.ndarray) -> float:
    return float((q + w * (r - q)).mean())


def _direct(w: np.ndarray, r: np.ndarray, groups: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """The direct model q(x): the weighted mean outcome of observed episodes with the same
    target first model, fitted on the other half of the episodes (cross-fitting)."""
    q = np.zeros(len(r))
    for h in (0, 1):
        fit, use = halves != h, halves == h
        overall = _snips(w[fit], r[fit])
        overall = 0.0 if math.isnan(overall) else overall
        for g in np.unique(groups[use]):
            m = fit & (groups == g)
            v = _snips(w[m], r[m]) if w[m].sum() > 0 else overall
            q[use & (groups == g)] = v
    return q


def episodes_from_log(decisions: Sequence[LoggedDecision], panel: Panel
                      ) -> tuple[list[Episode], dict[str, int]]:
    """The logged chat requests as episodes, with what was left out and why: requests logged
    without propensities (older builds, /v1/route), with a call not labeled, or with an error."""
    by: dict[str, list[LoggedDecision]] = defaultdict(list)
    for d in decisions:
        if d.endpoint == "chat" and d.decision != "explore":
            by[d.request_id].append(d)
    eps, skipped = [], {"no_propensity": 0, "unlabeled": 0}
    for rid, stages in by.items():
        stages.sort(key=lambda d: d.stage)
        if any(d.propensity is None for d in stages):
            skipped["no_propensity"] += 1
            continue
        if any(d.correct is None for d in stages):
            skipped["unlabeled"] += 1
            continue
        eps.append(Episode(rid, tuple(d.model for d in stages),
                           tuple(float(d.propensity or 1.0) for d in stages),
                           max(float(d.choice_eps or 0.0) for d in stages),
                           tuple(d.p_correct for d in stages),
                           tuple(d.correct for d in stages),
                           tuple(logged_cost(d, panel) for d in stages)))
    return eps, skipped


def simulate(policy: Any, lam: float, models: Sequence[str], p_after: Any,
             correct: np.ndarray, cost: np.ndarray, query: np.ndarray | None, eps: float,
             seed: int) -> list[Episode]:
    """The log the service would write serving `policy` at λ with route exploration ε on items
    whose every answer is known (p_after(j, before) -> (n,) p; (n, M) correct and cost): the
    same draws as the service (confroute.exploration)."""
    rng = random.Random(seed)
    p_of = cached_states(p_after)  # each state's p over every item, computed once
    out = []
    for i in range(correct.shape[0]):
        q = None if query is None else tuple(float(x) for x in query[i])
        start, prop = explore_first(policy.first(lam, list(q) if q else None), models, eps, rng)
        model: str | None = start.model
        calls: list[str] = []
        props, ps = [], []
        while model is not None:
            p = float(p_of(tuple(models.index(m) for m in (*calls, model)))[i])
            calls.append(model)
            props.append(prop)
            ps.append(p)
            d = policy.decide(model, p, lam, calls)
            d, prop = explore_decision(d, model, models, eps, rng)
            model = None if d.decision == "accept" else d.next_model
        idx = [models.index(m) for m in calls]
        out.append(Episode(str(i), tuple(calls), tuple(props), eps, tuple(ps),
                           tuple(bool(correct[i, j]) for j in idx),
                           tuple(float(cost[i, j]) for j in idx), q))
    return out


def truth(policy: Any, lam: float, models: Sequence[str], p_after: Any, correct: np.ndarray,
          cost: np.ndarray, query: np.ndarray | None) -> dict[str, float]:
    """The target's own accuracy and cost on every item (no exploration): the ground truth."""
    eps = simulate(policy, lam, models, p_after, correct, cost, query, 0.0, 0)
    return {"accuracy": float(np.mean([e.correct[-1] for e in eps])),
            "cost": float(np.mean([sum(e.cost) for e in eps]))}


def reference_arrays(version_dir: str | Path, traces: Sequence[str | Path]) -> Any:
    """EvalArrays of the items a version was not fitted on, scored as `confroute evaluate`
    scores them (every panel model's answer known: the simulation's ground truth)."""
    from confroute.features import FEATURE_NAMES
    from confroute.scoring import Scorer
    from confroute.traces import read_traces
    from training.evaluate import panel_of, scored_items, select_items
    from training.table import build_table

    scorer = Scorer.load(version_dir, FEATURE_NAMES)
    raw = build_table(read_traces(traces), panel_of(scorer.manifest), scorer.manifest.feature_config)
    return scored_items(scorer, select_items(raw, scorer.path, None, None)[0])[1]


def ground_truth_check(arrays: Any, policy: Any, log_lambda: float, target_lambda: float,
                       eps: float, seeds: Sequence[int], n_boot: int = 500) -> dict[str, Any]:
    """Per seed: a log written by serving `policy` at `log_lambda` with route exploration ε,
    the estimates of the policy at `target_lambda` from it, and whether each estimator's 95%
    interval holds the target's true accuracy and cost on the same items."""
    a = arrays
    base = float(a.cost[:, -1].mean())
    rel = a.cost / base
    true = truth(policy, target_lambda, list(a.models), a.p_after, a.correct, rel, a.query)
    rows = []
    for seed in seeds:
        log = simulate(policy, log_lambda, list(a.models), a.p_after, a.correct, rel, a.query,
                       eps, seed)
        est = estimate(log, policy, target_lambda, n_boot, seed)
        hold = {f"{what}_{e}": bool(est[what][e]["ci95"][0] <= true[what]
                                    <= est[what][e]["ci95"][1])
                for what in ("accuracy", "cost") for e in ESTIMATORS}
        rows.append({"seed": seed, "ess": est["ess"], "matched": est["matched"],
                     "estimates": {w: est[w] for w in ("accuracy", "cost")}, "holds": hold})
    held = {k: sum(r["holds"][k] for r in rows) for k in rows[0]["holds"]}
    return {"items": int(a.correct.shape[0]), "log_lambda": log_lambda,
            "target_lambda": target_lambda, "eps": eps, "truth": true, "seeds": len(rows),
            "intervals_holding_truth": held, "per_seed": rows,
            "cost_unit": "mean cost of always calling the last panel model"}
