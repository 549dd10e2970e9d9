"""Fit the cost_quality_tradeoff policy: per λ, the route and thresholds maximising the objective.

For each λ in the grid, maximise over routes and thresholds

    (1 - λ) * accuracy - λ * mean_cost / cost_of_last_model

where cost_of_last_model is the mean cost of always calling the last panel model. A route is any
non-empty subset of the panel kept in panel order; its last model always answers (it may be a
cheaper model than the last panel model: at λ = 1 the cheapest model alone usually wins).

Search: every route is enumerated (2^M - 1 of them; M <= 6) and, per route, every combination of
candidate thresholds is scored exactly in one pass (candidates: up to `n_candidates` evenly spaced
distinct values of each model's p, plus NEVER, which calls the model only so that later models see
its answer; later stages get fewer candidates when the grid would not fit in memory).

The scored set of (accuracy, cost) points does not depend on λ, so each λ takes the best point of
one fixed set (ties: the lower cost). Maximising a linear scalarisation over a fixed set makes
cost and accuracy non-increasing as λ grows (the accuracy-cost Pareto property; `fit_policy`
checks it). A chosen τ is moved down to the midpoint between the candidate and the next lower
observed p, which accepts exactly the same fitting rows with a margin for new ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from confroute.policy import PolicyRow, ThresholdPolicy
from confroute.policy_api import utility

DEFAULT_LAMBDAS = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 21))
RouteP = Callable[[Sequence[int]], np.ndarray]  # route (panel indices) -> (n, M) p for it
NEVER = 2.0  # τ above any p: the model is called (its answer feeds agree_prev) but never accepted
_GRID_BUDGET = 2_000_000  # items x threshold combinations of the later stages held in memory


@dataclass(frozen=True)
class Outcome:
    """Per-item result of replaying one cascade."""

    answered_by: np.ndarray  # (n,) panel index of the model whose answer stands
    correct: np.ndarray  # (n,) bool
    cost: np.ndarray  # (n,) summed cost of every model called
    calls: np.ndarray  # (n, M) bool: model j was called for item i


def replay(
    p: np.ndarray, correct: np.ndarray, cost: np.ndarray,
    route: Sequence[int], thresholds: Sequence[float],
) -> Outcome:
    """Run the cascade `route` (panel indices) with τ per non-final model, as Policy.decide does."""
    n, m = p.shape
    answered = np.full(n, route[-1])
    open_ = np.ones(n, dtype=bool)  # not yet answered
    calls = np.zeros((n, m), dtype=bool)
    for j, tau in zip(route[:-1], thresholds, strict=True):
        calls[:, j] = open_
        take = open_ & (p[:, j] >= tau)  # NaN compares False: escalates
        answered[take] = j
        open_ &= ~take
    calls[:, route[-1]] = open_
    rows = np.arange(n)
    return Outcome(answered, correct[rows, answered].astype(bool), (cost * calls).sum(1), calls)


def fit_policy(
    p: np.ndarray, correct: np.ndarray, cost: np.ndarray, models: Sequence[str],
    lambdas: Sequence[float] | None = None, n_bootstrap: int = 200, seed: int = 0,
    n_candidates: int = 50, route_p: RouteP | None = None, max_route: int | None = None,
) -> ThresholdPolicy:
    """Policy from held-out (n_items, M) arrays in panel order: calibrated p, correct, cost.

    `route_p(route)` may give p per route (panel indices): column j as scored when the route's
    earlier models were called (agree_prev sees only their answers, as in the service). Without
    it, `p` serves every route, which is exact for routes that skip no cheaper model.
    `max_route` caps the models on a route (None: every length).
    """
    p, correct, cost = _check_arrays(p, correct, cost, models)
    p_of = _route_probabilities(p, route_p)
    lams = sorted({float(x) for x in (DEFAULT_LAMBDAS if lambdas is None else lambdas)})
    if not lams or not all(0.0 <= x <= 1.0 for x in lams):
        raise ValueError(f"lambdas must be in [0, 1], got {lambdas}")
    base = float(cost[:, -1].mean())
    if base <= 0:
        raise ValueError("the last panel model has zero mean cost; costs cannot be normalised")
    points = _all_points(p_of, correct, cost / base, n_candidates, max_route)
    return _build(p_of, correct, cost / base, models, lams, points, n_bootstrap, seed)


def route_p_from_stages(stage_p: Callable[[int, tuple[int, ...]], np.ndarray], m: int, n: int
                        ) -> RouteP:
    """p per route from a stage scorer `(model j, earlier calls) -> (n,) p`: column j as scored
    after the route's earlier models (NaN for the route's last model and models off it)."""
    def route_p(route: Sequence[int]) -> np.ndarray:
        out = np.full((n, m), np.nan)
        for k, j in enumerate(route[:-1]):
            out[:, j] = stage_p(j, tuple(route[:k]))
        return out

    return route_p


def _route_probabilities(p: np.ndarray, route_p: RouteP | None) -> RouteP:
    """route -> validated (n, M) p, computed once per route."""
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def p_of(route: Sequence[int]) -> np.ndarray:
        key = tuple(route)
        if key not in cache:
            got = p if route_p is None else np.asarray(route_p(key), dtype=float)
            if got.shape != p.shape or np.any((got < 0) | (got > 1)):
                raise ValueError(f"route_p{key} must be an {p.shape} array of p in [0, 1] or NaN")
            cache[key] = got
        return cache[key]

    return p_of


def _check_arrays(
    p: np.ndarray, correct: np.ndarray, cost: np.ndarray, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float/bool copies; ValueError naming what is wrong."""
    p, cost = np.asarray(p, dtype=float), np.asarray(cost, dtype=float)
    correct = np.asarray(correct).astype(bool)
    if p.ndim != 2 or p.shape != correct.shape or p.shape != cost.shape:
        raise ValueError(f"p, correct, cost must share one (n_items, M) shape; got "
                         f"{p.shape}, {correct.shape}, {cost.shape}")
    if p.shape[0] < 1 or p.shape[1] != len(models):
        raise ValueError(f"need >= 1 item and one column per model {list(models)}; got {p.shape}")
    if not 1 <= len(models) <= 6:
        raise ValueError(f"route enumeration supports 1-6 panel models, got {len(models)}")
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(cost)) or np.any(cost < 0):
        raise ValueError("p must be in [0, 1] (or NaN) and cost finite and >= 0")
    return p, correct, cost


def _candidates(col: np.ndarray, k: int) -> np.ndarray:
    """Up to k observed p values (evenly spaced among the distinct ones), then NEVER; ascending."""
    vals = np.unique(col[~np.isnan(col)])
    return np.append(thin(vals, k), NEVER)


def thin(c: np.ndarray, k: int) -> np.ndarray:
    return c if c.size <= k else c[np.unique(np.linspace(0, c.size - 1, k).round().astype(int))]


@dataclass(frozen=True)
class _Points:
    """Every scored (route, threshold combination): accuracy, relative cost, where it came from."""

    acc: np.ndarray
    cost: np.ndarray
    route_id: np.ndarray
    combo: np.ndarray  # flat index into that route's threshold grid
    routes: list[tuple[int, ...]]
    grids: list[list[np.ndarray]]  # per route, the candidate τ per non-final stage


def _all_points(p_of: RouteP, correct: np.ndarray, cost: np.ndarray, k: int,
                max_route: int | None = None) -> _Points:
    """Score every route (ordered subset of the panel, at most `max_route` models) over its
    threshold grid."""
    n, m = correct.shape
    top = m if max_route is None else min(m, max_route)
    routes = [r for size in range(1, top + 1) for r in itertools.combinations(range(m), size)]
    acc, cst, rid, combo, grids = [], [], [], [], []
    for i, r in enumerate(routes):
        p = p_of(r)
        grid = _route_grid(r, n, {j: _candidates(p[:, j], k) for j in r[:-1]})
        a, c = _route_points(r, p, correct, cost, grid)
        acc.append(a)
        cst.append(c)
        rid.append(np.full(a.size, i))
        combo.append(np.arange(a.size))
        grids.append(grid)
    cat = np.concatenate
    return _Points(cat(acc), cat(cst), cat(rid), cat(combo), routes, grids)


def _route_grid(route: tuple[int, ...], n: int, cands: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Candidate τ per non-final stage; stages after the first thinned to fit the memory budget."""
    later = len(route) - 2
    k = int((_GRID_BUDGET / n) ** (1 / later)) if later > 0 else 0
    return [cands[j] if s == 0 else thin(cands[j], max(k, 2)) for s, j in enumerate(route[:-1])]


def _route_points(
    route: tuple[int, ...], p: np.ndarray, correct: np.ndarray, cost: np.ndarray,
    grid: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean accuracy and cost of the route at every threshold combination (C order over grid)."""
    n = p.shape[0]
    last = route[-1]
    sub_acc, sub_cost = correct[:, last].astype(float)[:, None], cost[:, last][:, None]
    if len(route) == 1:
        return sub_acc.mean(0), sub_cost.mean(0)
    for j, taus in reversed(list(zip(route[1:-1], grid[1:], strict=True))):
        acc_ok = (p[:, j, None] >= taus[None, :]).astype(float)[:, :, None]  # (n, K, 1)
        sub_acc = (acc_ok * correct[:, j, None, None]
                   + (1 - acc_ok) * sub_acc[:, None, :]).reshape(n, -1)
        sub_cost = (cost[:, j, None, None] + (1 - acc_ok) * sub_cost[:, None, :]).reshape(n, -1)
    j0 = route[0]
    a0 = (p[:, j0, None] >= grid[0][None, :]).astype(float)  # (n, K0)
    acc = (a0 * correct[:, j0, None]).sum(0)[:, None] + (1 - a0).T @ sub_acc
    cst = cost[:, j0].sum() + (1 - a0).T @ sub_cost
    return acc.ravel() / n, cst.ravel() / n


def _select(pts: _Points, lam: float) -> int:
    """Index of the best point at λ; ties (1e-12) go to the lower cost, then shorter route."""
    obj = utility(pts.acc, pts.cost, lam)
    tied = np.flatnonzero(obj >= obj.max() - 1e-12)
    length = np.array([len(pts.routes[r]) for r in pts.route_id[tied]])
    return int(tied[np.lexsort((length, pts.cost[tied]))[0]])


def _thresholds(pts: _Points, i: int, p_of: RouteP) -> tuple[tuple[int, ...], list[float]]:
    """Route and midpoint-adjusted thresholds of point i."""
    route, grid = pts.routes[pts.route_id[i]], pts.grids[pts.route_id[i]]
    p = p_of(route)
    idx = np.unravel_index(pts.combo[i], [g.size for g in grid]) if grid else ()
    taus = [_midpoint(float(g[k]), p[:, j]) for g, k, j in zip(grid, idx, route, strict=False)]
    return route, taus


def _midpoint(tau: float, col: np.ndarray) -> float:
    """Halfway down to the next lower observed p: same accepted rows, with a margin."""
    if tau >= NEVER:
        return NEVER
    lower = col[(col < tau) & ~np.isnan(col)]
    return float((lower.max() + tau) / 2) if lower.size else 0.0


def _build(
    p_of: RouteP, correct: np.ndarray, cost: np.ndarray, models: Sequence[str],
    lams: list[float], pts: _Points, n_bootstrap: int, seed: int,
) -> ThresholdPolicy:
    """Rows from the chosen points, replayed for their numbers and bootstrap intervals."""
    chosen = [_thresholds(pts, _select(pts, lam), p_of) for lam in lams]
    outcomes = [replay(p_of(r), correct, cost, r, t) for r, t in chosen]
    cis = bootstrap_ci(np.array([o.correct for o in outcomes]), n_bootstrap, seed)
    rows = tuple(
        PolicyRow(lam=lam, route=tuple(models[j] for j in r),
                  thresholds={models[j]: t for j, t in zip(r, taus, strict=False)},
                  accuracy=float(o.correct.mean()), cost=float(o.cost.mean()),
                  accuracy_ci=ci, n_items=int(correct.shape[0]))
        for lam, (r, taus), o, ci in zip(lams, chosen, outcomes, cis, strict=True)
    )
    _check_monotone(rows)
    return ThresholdPolicy(tuple(models), rows, {
        "objective": "(1 - lambda) * accuracy - lambda * cost / cost_of_last_model",
        "cost_unit": f"mean cost / mean cost of always calling {models[-1]}",
        "search": "all routes x exact threshold grid", "n_items": int(correct.shape[0]),
        "n_bootstrap": n_bootstrap, "seed": seed})


def bootstrap_ci(
    correct: np.ndarray, n_bootstrap: int, seed: int
) -> list[tuple[float, float] | None]:
    """95% percentile interval of each row's accuracy over item resamples (same for all rows)."""
    if n_bootstrap <= 0:
        return [None] * correct.shape[0]
    idx = np.random.default_rng(seed).integers(0, correct.shape[1], (n_bootstrap, correct.shape[1]))
    acc = correct[:, idx].mean(-1)  # (rows, n_bootstrap)
    lo, hi = np.percentile(acc, [2.5, 97.5], axis=1)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _check_monotone(rows: Sequence[PolicyRow]) -> None:
    """Cost and accuracy must not rise with λ (holds by construction; a failure is a bug)."""
    cost, acc = np.array([r.cost for r in rows]), np.array([r.accuracy for r in rows])
    if np.any(np.diff(cost) > 1e-9) or np.any(np.diff(acc) > 1e-9):
        raise RuntimeError(f"policy is not monotone in λ: cost {cost}, accuracy {acc}")
