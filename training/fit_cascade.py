"""Fit the cascade policy (confroute.cascade) by backward induction on cross-fitted rows.

A state is the set of panel models called so far; its last (most expensive) model has just
answered with calibrated p. Going backwards over the panel, for each grid λ:

- at the last panel model nothing is left: the answer stands, worth `(1 - λ) * correct`.
- at a state S whose last model is i, for each later model j the realised utility of calling it,
  `-λ * cost_j + value(S + j)`, is regressed on p_i over every fitting item (not only those that
  reach S: the regression is conditional on p_i, so every item informs it). The line's slope is
  shrunk towards 0 (ridge, SHRINK pseudo-items) and kept in [0, 1 - λ], so a more confident
  answer never makes a call more attractive than accepting it: the state accepts iff p >= τ.
- value(S) per item is then what the fitted rule does with that item: `(1 - λ) * correct_i` if
  it accepts, else the chosen call's realised utility (Longstaff-Schwartz: decisions from the
  fitted lines, values from what really happened, so an optimistic line is not compounded).
- before any call, the realised utility of starting at each model j is regressed on the query
  features (ridge on standardised features, SHRINK pseudo-items); the best start is called.

- across λ: the per-λ fits are independent and noisy near a λ where the best single model
  changes (a start line tips every item one way), so a λ whose fitted cost comes out above the
  lower λ's is served by that lower λ's lines (`fitted_lambda`): cost never rises with λ. (Serving
  every λ by the fitted row of highest utility at it was tried too: it kept 5 of 21 distinct
  rows and lost 0.004 APGR in the learning curve, 2026-12-02.)

Costs are relative to the mean cost of always calling the last panel model. Nothing here is a
grid search over thresholds: a few hundred items fit two numbers per (state, option) and three
per start, which is what makes the rule hold up on items it was not fitted on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from confroute.cascade import CascadePolicy, CascadeRow, State, state_key
from confroute.query import QUERY_FEATURES
from training.fit_policy import DEFAULT_LAMBDAS, bootstrap_ci

SHRINK = 20.0  # pseudo-items of "no dependence" in every regression
TIE_COST = 1e-4  # the cost weight at λ = 0, where cost only breaks ties (the cheaper call wins)
StageP = Callable[[int, tuple[int, ...]], np.ndarray]  # (model j, earlier calls) -> (n,) p of j


@dataclass(frozen=True)
class Replayed:
    """Per-item outcome of the cascade at one λ (what fit and evaluation both report)."""

    answered_by: np.ndarray  # (n,) panel index whose answer stands
    correct: np.ndarray  # (n,) bool
    cost: np.ndarray  # (n,) summed cost of every model called (units of the given costs)
    calls: np.ndarray  # (n, M) bool


def fit_cascade(
    stage_p: StageP, correct: np.ndarray, cost: np.ndarray, models: Sequence[str],
    query: np.ndarray | None = None, lambdas: Sequence[float] | None = None,
    n_bootstrap: int = 200, seed: int = 0, shrink: float = SHRINK, bags: int = 1,
) -> CascadePolicy:
    """A CascadePolicy from (n, M) arrays in panel order (correct, absolute cost), the
    cross-fitted `stage_p`, and (n, len(QUERY_FEATURES)) query features (None: start at the
    best model on average)."""
    correct, cost, base = check_outcomes(correct, cost, models)
    n = correct.shape[0]
    rel = cost / base
    x = _query(query, n)
    span = [(float(lo), float(hi)) for lo, hi in zip(x[:, 1:].min(0), x[:, 1:].max(0),
                                                     strict=True)] if query is not None else None
    lams = sorted({float(v) for v in (DEFAULT_LAMBDAS if lambdas is None else lambdas)})
    p_of = cached_states(stage_p)
    rows, outs = [], []
    for lam in lams:
        states, start = _bagged(lam, p_of, correct, rel, x, shrink, bags, seed)
        row = _row(lam, states, start, models)
        out = replay_cascade(row, models, p_of, correct, cost, query, span)
        rows.append((row, out))
        outs.append(out)
    cis = bootstrap_ci(np.array([o.correct for o in outs]), n_bootstrap, seed)
    final = _monotone([_with_numbers(r, o, ci, rel, models)
                       for (r, o), ci in zip(rows, cis, strict=True)])
    mean = x[:, 1:].mean(0) if x.shape[1] > 1 else np.zeros(len(QUERY_FEATURES))
    return CascadePolicy(tuple(models), final, {
        "objective": "(1 - lambda) * accuracy - lambda * cost / cost_of_last_model",
        "cost_unit": f"mean cost / mean cost of always calling {models[-1]}",
        "fit": "backward induction, one ridge line per (state, later model), slope in [0, 1-λ]",
        "shrink_pseudo_items": shrink, "n_items": n, "n_bootstrap": n_bootstrap, "seed": seed,
        "query_mean": [float(v) for v in mean], "start_uses_query": query is not None,
        "query_range": span,
        "single_accuracy": {mm: float(correct[:, j].mean()) for j, mm in enumerate(models)}})


def cached_states(stage_p: StageP) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A state's (models called, the answering one last) p, computed once per state."""
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def p_of(s: tuple[int, ...]) -> np.ndarray:
        if s not in cache:
            cache[s] = np.asarray(stage_p(s[-1], s[:-1]), dtype=float)
        return cache[s]

    return p_of


def check_outcomes(correct: np.ndarray, cost: np.ndarray, models: Sequence[str],
                   min_items: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """(n, M) correct (bool) and absolute cost (float) in panel order, and the last model's mean
    cost (the unit of relative cost); ValueError naming what is wrong."""
    correct = np.asarray(correct).astype(bool)
    cost = np.asarray(cost, dtype=float)
    if correct.ndim != 2 or cost.shape != correct.shape or correct.shape[1] != len(models) \
            or correct.shape[0] < min_items:
        raise ValueError(f"correct and cost must be (n_items >= {min_items}, {len(models)}); "
                         f"got {correct.shape}, {cost.shape}")
    base = float(cost[:, -1].mean())
    if base <= 0 or not np.all(np.isfinite(cost)):
        raise ValueError("costs must be finite and the last model's mean cost > 0")
    return correct, cost, base


def _monotone(rows: Sequence[CascadeRow]) -> tuple[CascadeRow, ...]:
    """Rows in λ order, each whose fitted cost rises above the row before it served by that
    row's lines instead: the optimal cascade's cost can only fall as λ grows, so a rise is a
    noisy fit (typically a start line tipping every item to the dearer model)."""
    out: list[CascadeRow] = []
    for r in rows:
        prev = out[-1] if out else None
        if prev is not None and r.cost > prev.cost + 1e-12:
            r = replace(prev, lam=r.lam, fitted_lambda=prev.fit_lam)
        out.append(r)
    return tuple(out)


def _query(query: np.ndarray | None, n: int) -> np.ndarray:
    """[1, features] per item; just [1] without features (or with non-finite ones)."""
    if query is None:
        return np.ones((n, 1))
    q = np.asarray(query, dtype=float)
    if q.shape != (n, len(QUERY_FEATURES)):
        raise ValueError(f"query features must be ({n}, {len(QUERY_FEATURES)}), got {q.shape}")
    q = np.where(np.isfinite(q), q, np.nanmean(np.where(np.isfinite(q), q, np.nan), axis=0))
    return np.column_stack([np.ones(n), q])


def _states(m: int) -> list[tuple[int, ...]]:
    """Every set of called models (sorted), latest last model first: backward induction order."""
    subsets = [s for k in range(1, m + 1) for s in itertools.combinations(range(m), k)]
    return sorted(subsets, key=lambda s: -s[-1])


def _line(p: np.ndarray, target: np.ndarray, cap: float, shrink: float) -> tuple[float, float]:
    """a + b * p fitted to target over rows with a p; b ridge-shrunk and clipped to [0, cap]."""
    ok = np.isfinite(p)
    if ok.sum() < 2:
        return float(target.mean()), 0.0
    pp, tt = p[ok], target[ok]
    pc = pp - pp.mean()
    sxx = float(pc @ pc)
    b = 0.0 if sxx <= 1e-12 else float(pc @ (tt - tt.mean())) / (sxx * (1.0 + shrink / ok.sum()))
    b = min(max(b, 0.0), cap)
    return float(tt.mean() - b * pp.mean()), b


def _threshold(lam: float, options: dict[int, tuple[float, float]]) -> float:
    """Least p with (1 - λ) p >= a + b p for every option (slopes < 1 - λ); > 1: never."""
    if not options:
        return 0.0
    tau = 0.0
    for a, b in options.values():
        room = (1.0 - lam) - b
        if room <= 1e-12:
            if a > 0:
                return 2.0
            continue
        tau = max(tau, a / room)
    return float(min(tau, 2.0))


def _act(lam: float, p: np.ndarray, mean_p: float, tau: float,
         options: dict[int, tuple[float, float]]) -> np.ndarray:
    """Per item: -1 to accept, else the panel index to call (ties: the cheaper model)."""
    if not options:
        return np.full(p.shape, -1)
    q = np.where(np.isfinite(p), p, mean_p)
    later = sorted(options)
    vals = np.column_stack([options[j][0] + options[j][1] * q for j in later])
    choice = np.array(later)[np.argmax(vals, axis=1)]  # argmax takes the first (cheapest) tie
    return np.where(np.isfinite(p) & (p >= tau), -1, choice)


def _fit_lambda(
    lam: float, p_of: Callable[[tuple[int, ...]], np.ndarray], correct: np.ndarray,
    rel: np.ndarray, x: np.ndarray, shrink: float,
) -> tuple[dict[tuple[int, ...], tuple[dict[int, tuple[float, float]], float, float]],
           dict[int, np.ndarray]]:
    """Fitted states (options, τ, mean p) and start weights (over [1, features]) at one λ."""
    m = correct.shape[1]
    lam_c = lam if lam > 0 else TIE_COST  # at λ = 0 cost breaks ties only
    value: dict[tuple[int, ...], np.ndarray] = {}
    fitted = {}
    for s in _states(m):
        i = s[-1]
        p = p_of(s)
        options = {j: _line(p, -lam_c * rel[:, j] + value[(*s, j)], 1.0 - lam, shrink)
                   for j in range(i + 1, m)}
        finite = p[np.isfinite(p)]
        mean_p = float(finite.mean()) if finite.size else 0.5
        tau = _threshold(lam, options)
        act = _act(lam, p, mean_p, tau, options)
        v = (1.0 - lam) * correct[:, i].astype(float)
        for j in options:
            take = act == j
            v[take] = -lam_c * rel[take, j] + value[(*s, j)][take]
        value[s] = v
        fitted[s] = (options, tau, mean_p)
    start = {j: _ridge(x, -lam_c * rel[:, j] + value[(j,)], shrink) for j in range(m)}
    return fitted, start


def _bagged(
    lam: float, p_of: Callable[[tuple[int, ...]], np.ndarray], correct: np.ndarray,
    rel: np.ndarray, x: np.ndarray, shrink: float, bags: int, seed: int,
) -> tuple[dict[tuple[int, ...], tuple[dict[int, tuple[float, float]], float, float]],
           dict[int, np.ndarray]]:
    """_fit_lambda, or with bags > 1 its lines averaged over that many bootstrap resamples of the
    items (bagging: a line tipped by a few items is averaged with fits that lack them), each
    state's threshold recomputed from the averaged lines."""
    if bags <= 1:
        return _fit_lambda(lam, p_of, correct, rel, x, shrink)
    n = correct.shape[0]
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(bags):
        idx = np.asarray(rng.integers(0, n, n))
        fits.append(_fit_lambda(lam, _resampled(p_of, idx), correct[idx], rel[idx], x[idx],
                                shrink))
    states = {}
    for s, (options, _tau, _mp) in fits[0][0].items():
        avg = {j: (float(np.mean([f[0][s][0][j][0] for f in fits])),
                   float(np.mean([f[0][s][0][j][1] for f in fits]))) for j in options}
        mean_p = float(np.mean([f[0][s][2] for f in fits]))
        states[s] = (avg, _threshold(lam, avg), mean_p)
    start = {j: np.mean([f[1][j] for f in fits], axis=0) for j in fits[0][1]}
    return states, start


def _resampled(p_of: Callable[[tuple[int, ...]], np.ndarray], idx: np.ndarray
               ) -> Callable[[tuple[int, ...]], np.ndarray]:
    return lambda s: p_of(s)[idx]


def _ridge(x: np.ndarray, y: np.ndarray, shrink: float) -> np.ndarray:
    """Weights over [1, features] in raw units: ridge on standardised features, intercept free."""
    if x.shape[1] == 1:
        return np.array([float(y.mean()), *([0.0] * len(QUERY_FEATURES))])
    f = x[:, 1:]
    mu, sd = f.mean(0), f.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = (f - mu) / sd
    w = np.linalg.solve(z.T @ z + shrink * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    raw = w / sd
    return np.array([float(y.mean() - raw @ mu), *raw])


def _row(lam: float, states: dict, start: dict[int, np.ndarray], models: Sequence[str]
         ) -> CascadeRow:
    """The fitted λ as a CascadeRow (numbers filled in later)."""
    st = {}
    for s, (options, tau, mean_p) in states.items():
        called = tuple(models[k] for k in s)
        st[state_key(called)] = State(called, {models[j]: ab for j, ab in options.items()},
                                      tau, mean_p)
    return CascadeRow(lam, {models[j]: tuple(float(v) for v in w) for j, w in start.items()},
                      st, accuracy=0.0, cost=0.0)


def replay_cascade(
    row: CascadeRow, models: Sequence[str], p_of: Callable[[tuple[int, ...]], np.ndarray],
    correct: np.ndarray, cost: np.ndarray, query: np.ndarray | None,
    query_range: Sequence[tuple[float, float]] | None = None, first: np.ndarray | None = None,
) -> Replayed:
    """Run one λ's cascade on every item, as CascadePolicy.first and .decide do in the service;
    `first`: each item's first model (panel index) where the caller caps it as the service does
    (CascadePolicy.first: no dearer than at a lower λ), else the row's own (first_models)."""
    n, m = correct.shape
    pos = {name: k for k, name in enumerate(models)}
    if first is None:
        first = first_models(row, models, query, query_range, n)
    calls = np.zeros((n, m), dtype=bool)
    answered = np.full(n, -1)
    at: list[tuple[int, ...]] = [(int(j),) for j in first]
    open_ = np.ones(n, dtype=bool)
    for _ in range(m):
        for s in sorted({a for k, a in enumerate(at) if open_[k]}):
            idx = np.array([k for k in range(n) if open_[k] and at[k] == s])
            calls[idx, s[-1]] = True
            state = row.states.get(state_key(tuple(models[k] for k in s)))
            options = {pos[name]: ab for name, ab in state.options.items()} if state else {}
            tau, mean_p = (state.threshold, state.mean_p) if state else (0.0, 0.5)
            act = _act(row.lam, p_of(s)[idx], mean_p, tau, options)
            done = act < 0
            answered[idx[done]] = s[-1]
            open_[idx[done]] = False
            for k, j in zip(idx[~done], act[~done], strict=True):
                at[k] = (*s, int(j))
        if not open_.any():
            break
    rows_ = np.arange(n)
    return Replayed(answered, correct[rows_, answered].astype(bool), (cost * calls).sum(1), calls)


def first_models(row: CascadeRow, models: Sequence[str], query: np.ndarray | None,
                 query_range: Sequence[tuple[float, float]] | None, n: int) -> np.ndarray:
    """Each item's first model (panel index) by the row's start lines (without query features
    every item starts where the intercepts say). Features are clipped to `query_range`, the
    fitting rows' range, as the service clips them: the start lines are not extrapolated to
    questions unlike any the policy saw."""
    pos = {name: k for k, name in enumerate(models)}
    starts = sorted(row.start, key=pos.__getitem__)
    w = np.array([row.start[s] for s in starts])  # (starts, 1 + features)
    x = _query(query, n) if query is not None else np.ones((n, 1))
    if query_range is not None and x.shape[1] > 1:
        lo, hi = np.array(query_range, dtype=float).T
        x = np.column_stack([x[:, 0], np.clip(x[:, 1:], lo, hi)])
    return np.array([pos[s] for s in starts])[np.argmax(x @ w[:, : x.shape[1]].T, axis=1)]


def _with_numbers(row: CascadeRow, out: Replayed, ci: tuple[float, float] | None,
                  rel: np.ndarray, models: Sequence[str]) -> CascadeRow:
    base_cost = (rel * out.calls).sum(1)
    return CascadeRow(
        row.lam, row.start, row.states, accuracy=float(out.correct.mean()),
        cost=float(base_cost.mean()), accuracy_ci=ci, n_items=int(out.correct.size),
        answered={mm: float((out.answered_by == j).mean()) for j, mm in enumerate(models)},
        calls={mm: float(out.calls[:, j].mean()) for j, mm in enumerate(models)})
