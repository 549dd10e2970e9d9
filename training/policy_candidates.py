"""The candidate policies cross-validation chooses among (training/select_policy.py), each a rule
at every grid λ' written as cascade rows, so one replay (fit_cascade.replay_cascade) and one runtime
(confroute.cascade) serve them all:

- `single`: one model for every question (the best at λ' on the fitting items);
- `global_threshold`: one route (2+ models in panel order) and one threshold for all its models;
- `thresholds`: one route and a threshold per model (training/fit_policy.py's grid search);
- `cascade`: the fitted cascade (training/fit_cascade.py: start from query features, one line per
  state and later model, bagged over bootstrap resamples when asked).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from confroute.cascade import CascadeRow, State, state_key
from confroute.policy_api import utility
from confroute.query import QUERY_FEATURES
from training.fit_cascade import Replayed, StageP, cached_states, fit_cascade, replay_cascade
from training.fit_policy import NEVER, fit_policy, replay, route_p_from_stages, thin

METHODS = ("single", "global_threshold", "thresholds", "cascade")  # simplest first


@dataclass(frozen=True)
class Candidate:
    method: str
    lam: float  # the grid λ' it was fitted at


def sub_items(stage_p: StageP, idx: np.ndarray) -> StageP:
    """The stage scorer on the items `idx` only."""
    return lambda j, before: np.asarray(stage_p(j, before), dtype=float)[idx]


def p_matrix(stage_p: StageP, m: int) -> np.ndarray:
    """(n, M): each model's p after every cheaper model answered (the full-panel route)."""
    return np.column_stack([stage_p(j, tuple(range(j))) for j in range(m)])


def route_row(lam: float, route: Sequence[int], taus: Sequence[float], models: Sequence[str],
              source: str, value: float = 0.0) -> CascadeRow:
    """A route with one threshold per non-final model, as a cascade row: the route's first model
    starts, each state accepts iff p >= its τ and otherwise calls the next route model (its line
    `(1 - λ) τ`, flat, so the utilities in a reply show where accepting and calling cross)."""
    names = [models[j] for j in route]
    states = {}
    for k in range(len(names)):
        called = tuple(names[: k + 1])
        if k + 1 < len(names):
            tau = float(taus[k])
            states[state_key(called)] = State(called, {names[k + 1]: ((1.0 - lam) * tau, 0.0)},
                                              tau, 0.5)
        else:
            states[state_key(called)] = State(called, {}, 0.0, 0.5)
    start = {names[0]: (float(value), *([0.0] * len(QUERY_FEATURES)))}
    return CascadeRow(lam, start, states, accuracy=0.0, cost=0.0, source=source)


def _global_rows(p: np.ndarray, correct: np.ndarray, rel: np.ndarray, lams: Sequence[float],
                 models: Sequence[str], n_taus: int = 40) -> dict[float, CascadeRow]:
    """Per λ': the route (2+ models in panel order) and one threshold for all its models that
    maximise utility on these items; a threshold halfway between observed p values."""
    m = correct.shape[1]
    pts: list[tuple[float, float, tuple[int, ...], float]] = []
    for k in range(2, m + 1):
        for route in itertools.combinations(range(m), k):
            pooled = p[:, list(route[:-1])]
            pooled = np.unique(pooled[np.isfinite(pooled)])
            taus = np.append(thin(pooled, n_taus), NEVER)
            for tau in taus:
                out = replay(p, correct, rel, route, [tau] * (k - 1))
                lower = pooled[pooled < tau]
                mid = float((lower.max() + tau) / 2) if lower.size and tau < NEVER else float(tau)
                pts.append((float(out.correct.mean()), float(out.cost.mean()), route,
                            mid if tau > 0 else 0.0))
    acc, cst = np.array([q[0] for q in pts]), np.array([q[1] for q in pts])
    out_rows = {}
    for lam in lams:
        _, _, route, tau = pts[_best(utility(acc, cst, lam), cst)]
        out_rows[lam] = route_row(lam, route, [tau] * (len(route) - 1), models, "global_threshold")
    return out_rows


def _best(obj: np.ndarray, cost: np.ndarray) -> int:
    """Index of the highest utility; ties (1e-12) go to the lower cost."""
    tied = np.flatnonzero(obj >= obj.max() - 1e-12)
    return int(tied[np.argmin(cost[tied])])


def _single_rows(correct: np.ndarray, rel: np.ndarray, lams: Sequence[float],
                 models: Sequence[str]) -> dict[float, CascadeRow]:
    acc, cst = correct.mean(0), rel.mean(0)
    return {lam: route_row(lam, [_best(utility(acc, cst, lam), cst)], [], models, "single")
            for lam in lams}


def _threshold_rows(stage_p: StageP, correct: np.ndarray, cost: np.ndarray,
                    lams: Sequence[float], models: Sequence[str]) -> dict[float, CascadeRow]:
    n, m = correct.shape
    pol = fit_policy(p_matrix(stage_p, m), correct, cost, models, lams, n_bootstrap=0,
                     route_p=route_p_from_stages(stage_p, m, n))
    pos = {name: k for k, name in enumerate(models)}
    return {r.lam: route_row(r.lam, [pos[x] for x in r.route],
                             [r.thresholds[x] for x in r.route[:-1]], models, "thresholds")
            for r in pol.rows}


def fit_candidates(stage_p: StageP, correct: np.ndarray, cost: np.ndarray,
                   models: Sequence[str], query: np.ndarray | None, lams: Sequence[float],
                   base: float, methods: Sequence[str] = METHODS, bags: int = 1, seed: int = 0
                   ) -> tuple[dict[Candidate, CascadeRow], dict[str, object]]:
    """Every method's rule at every grid λ', fitted on these items (costs relative to `base`)."""
    rel = cost / base
    rows: dict[Candidate, CascadeRow] = {}
    meta: dict[str, object] = {}
    for method in methods:
        if method == "single":
            got = _single_rows(correct, rel, lams, models)
        elif method == "global_threshold":
            got = _global_rows(p_matrix(stage_p, len(models)), correct, rel, lams, models)
        elif method == "thresholds":
            got = _threshold_rows(stage_p, correct, cost, lams, models)
        else:
            pol = fit_cascade(stage_p, correct, cost, models, query=query, lambdas=lams,
                              n_bootstrap=0, bags=bags, seed=seed)
            got = {r.lam: r for r in pol.rows}
            meta["query_range"] = pol.meta.get("query_range")
            meta["query_mean"] = pol.meta.get("query_mean")
        rows.update({Candidate(method, lam): r for lam, r in got.items()})
    return rows, meta


def replay_row(row: CascadeRow, models: Sequence[str], stage_p: StageP, correct: np.ndarray,
            cost: np.ndarray, query: np.ndarray | None, span: object) -> Replayed:
    """The row on these items as the service runs it (only fitted cascade rows read the query)."""
    reads = row.source == "cascade"
    return replay_cascade(row, models, cached_states(stage_p), correct, cost,
                          query if reads else None,
                          span if reads else None)  # type: ignore[arg-type]
