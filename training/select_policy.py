"""The default policy fit: the fitted cascade, with λ = 0 and any switch to a simpler candidate
decided by cross-validation on the training items.

Every candidate rule (training/policy_candidates.py: one model, one global threshold, a threshold
per model, the fitted cascade, each at every grid λ') is fitted on K-1 folds of the items and
replayed on the K-th as the service runs it, so each has an out-of-fold accuracy and cost per
item. Then, per grid λ:

- λ = 0 ("best accuracy, at the least cost"): the cascade fitted at the lowest grid λ' that is
  either no dearer out of fold than the strongest single model (the single of highest
  out-of-fold accuracy) or more accurate than it out of fold (by more than `lambda0_se` standard
  errors of the paired per-item difference; default 0: any gain); that single model itself where
  the cheap-enough cascade is less accurate than it by more than one standard error. So λ = 0
  does not pay more than the best one model for what that model gives. Demanding one standard
  error of gain instead (`lambda0_se` 1) kept more panels' λ = 0 within the strongest model's
  cost but cost APGR, most at 50 training items (docs/benchmarks.md, 2026-12-07).
- λ > 0: the cascade fitted at λ, unless another candidate's out-of-fold utility
  `(1 - λ) acc - λ cost` beats it by more than `switch_se` standard errors (then the cheapest
  of those within `switch_se` of the best: the one-standard-error rule with cost as simplicity).
  The default `switch_se` is infinite, i.e. the cascade always serves λ > 0: on the panel zoo
  (bench/panel_zoo.py, 60 development panels, seeds 1000-1059, 300 training items, 2026-12-07)
  switching at 1 and 3 standard errors lost 0.014 and 0.009 mean APGR against never switching
  and kept fewer panels at or above one global threshold (0.83 and 0.83 against 0.85): picking
  among ~80 rules on 300 items is a noisier choice than fitting one. The knob stays for panels
  unlike the zoo's. With it infinite only the candidates λ = 0 can choose (the cascade and the
  single models) are fitted: the others would be cross-validated for nothing.
- the chosen rules are refitted on every item, and cost never rises with λ: a λ whose refitted
  rule costs more on the training items than the lower λ's serves that lower λ's rule (as
  fit_cascade does with its own rows).

Each row's accuracy and cost are the out-of-fold ones, what a user should expect on new
questions, pooled across λ by isotonic regression so they too never rise with λ.

Bagging the cascade's lines over bootstrap resamples (`bags`) is there but off: on 100 zoo
panels (seeds 2000-2099) 10 bags gave
mean APGR gain over one threshold +0.163 against +0.164 without, 0.90 of panels not below it
against 0.91, for 10x the fitting time. scikit-learn's TunedThresholdClassifierCV picks one threshold the
same way (a grid scored by cross-validation); it is not used because the candidates here are
whole multi-model policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

from confroute.cascade import CascadePolicy
from confroute.policy_api import utility
from confroute.query import QUERY_FEATURES
from training.fit_cascade import Replayed, StageP, check_outcomes
from training.fit_policy import DEFAULT_LAMBDAS, bootstrap_ci
from training.policy_candidates import (
    METHODS,
    Candidate,
    fit_candidates,
    replay_row,
    sub_items,
)

LAMBDA0_SE = 0.0  # λ = 0 pays above the strongest single model only for accuracy beyond this
SWITCH_SE = math.inf  # λ > 0 leaves the cascade only for a candidate better beyond this
BAGS = 1  # bootstrap fits averaged into the cascade's lines (1: no bagging; see above)
MIN_FOLD_ITEMS = 10


def cross_validate(stage_p: StageP, correct: np.ndarray, cost: np.ndarray,
                   models: Sequence[str], query: np.ndarray | None, lams: Sequence[float],
                   folds: int, seed: int, methods: Sequence[str] = METHODS, bags: int = 1
                   ) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """Out-of-fold (candidates, correct (C, n), relative cost (C, n)) of every candidate."""
    n = correct.shape[0]
    base = float(cost[:, -1].mean())
    k = max(2, min(folds, n // MIN_FOLD_ITEMS))
    acc: dict[Candidate, np.ndarray] = {}
    cst: dict[Candidate, np.ndarray] = {}
    for train, test in KFold(k, shuffle=True, random_state=seed).split(np.arange(n)):
        q_tr = None if query is None else query[train]
        rows, meta = fit_candidates(sub_items(stage_p, train), correct[train], cost[train],
                                    models, q_tr, lams, base, methods, bags, seed)
        for cand, row in rows.items():
            out = replay_row(row, models, sub_items(stage_p, test), correct[test], cost[test],
                             None if query is None else query[test], meta.get("query_range"))
            acc.setdefault(cand, np.full(n, np.nan))[test] = out.correct
            cst.setdefault(cand, np.full(n, np.nan))[test] = out.cost / base
    cands = list(acc)
    return cands, np.array([acc[c] for c in cands]), np.array([cst[c] for c in cands])


def _paired_se(x: np.ndarray) -> np.ndarray:
    """Standard error of the mean of each row of per-item differences."""
    return x.std(1, ddof=1) / np.sqrt(x.shape[1]) if x.shape[1] > 1 else np.zeros(len(x))


def choose(cands: Sequence[Candidate], acc: np.ndarray, cost: np.ndarray, lams: Sequence[float],
           switch_se: float = SWITCH_SE, lambda0_se: float = LAMBDA0_SE) -> list[int]:
    """Per λ (increasing), the index of the chosen candidate (module docstring: the rule). No
    monotone pass here: fit_selected makes cost fall with λ on the refitted rules."""
    mean_cost = cost.mean(1)
    rank = np.array([METHODS.index(c.method) for c in cands])
    chosen: list[int] = []
    for lam in lams:
        if lam == 0:
            chosen.append(_most_accurate(cands, acc, cost, rank, lambda0_se))
            continue
        u = utility(acc, cost, lam)  # (C, n) per item
        diff = u[int(np.argmax(u.mean(1)))][None, :] - u
        se = _paired_se(diff)
        limit = np.zeros_like(se)  # (inf * 0 is NaN: the best candidate, diff 0, has se 0)
        limit[se > 0] = switch_se * se[se > 0]
        tied = diff.mean(1) <= limit + 1e-12
        own = [i for i, c in enumerate(cands) if c.method == "cascade" and c.lam <= lam + 1e-9]
        own_i = max(own, key=lambda i: cands[i].lam) if own else None
        if own_i is not None and tied[own_i]:
            chosen.append(own_i)  # the cascade, unless beaten beyond noise
        else:
            idx = np.flatnonzero(tied)
            chosen.append(int(idx[np.lexsort((rank[idx], mean_cost[idx]))[0]]))
    return chosen


def _most_accurate(cands: Sequence[Candidate], acc: np.ndarray, cost: np.ndarray,
                   rank: np.ndarray, lambda0_se: float) -> int:
    """λ = 0's choice (module docstring): the cascade fitted at the lowest λ' whose out-of-fold
    cost is no more than the strongest single model's, or whose accuracy beats that model's
    beyond noise; the strongest single model itself where that cascade is less accurate than it
    beyond noise (or there is no cascade). No maximum over the noisy out-of-fold accuracies of
    every candidate: on 300 items the luckiest of ~80 rules is not the best one."""
    mean_acc, mean_cost = acc.mean(1), cost.mean(1)
    single = [i for i, c in enumerate(cands) if c.method == "single"]
    cascades = sorted((i for i, c in enumerate(cands) if c.method == "cascade"),
                      key=lambda i: cands[i].lam)
    if not single:
        return cascades[0] if cascades else int(np.argmax(mean_acc))
    s = max(single, key=lambda i: (mean_acc[i], -mean_cost[i]))

    def gain(i: int) -> tuple[float, float]:
        d = acc[i] - acc[s]
        return float(d.mean()), float(_paired_se(d[None, :])[0])

    for i in cascades:
        g, se = gain(i)
        if g > lambda0_se * se + 1e-12:
            return i  # more accurate than the best single model beyond noise: worth its price
        if mean_cost[i] <= mean_cost[s] + 1e-12:
            return i if g >= -se - 1e-12 else s  # as cheap: unless clearly less accurate
    return s


def _monotone(picked: list[int], outs: list[Replayed]) -> tuple[list[int], list[Replayed]]:
    """Cost never rises with λ, judged on the refitted rules' replay on every item (as
    fit_cascade judges its own rows): a λ whose rule costs more than the lower λ's serves that
    lower λ's rule. Judging on the noisier out-of-fold figures instead, with a dominance pass,
    dropped whole stretches of the curve (zoo seed 11: the middle model's point) and cost 0.016
    mean APGR (docs/benchmarks.md, 2026-12-08)."""
    picked, outs = list(picked), list(outs)
    for k in range(1, len(picked)):
        if outs[k].cost.mean() > outs[k - 1].cost.mean() + 1e-12:
            picked[k], outs[k] = picked[k - 1], outs[k - 1]
    return picked, outs


def _pooled(lams: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Out-of-fold figures per λ made non-increasing in λ (pool adjacent violators): the true
    ones are, and the refitted rules' estimates only miss by fold noise."""
    return IsotonicRegression(increasing=False).fit_transform(np.asarray(lams), values)


def fit_selected(
    stage_p: StageP, correct: np.ndarray, cost: np.ndarray, models: Sequence[str],
    query: np.ndarray | None = None, lambdas: Sequence[float] | None = None, folds: int = 5,
    seed: int = 0, n_bootstrap: int = 200, switch_se: float = SWITCH_SE,
    lambda0_se: float = LAMBDA0_SE, bags: int = BAGS, methods: Sequence[str] = METHODS,
) -> CascadePolicy:
    """A CascadePolicy whose row at each λ is the rule chosen by cross-validation, refitted on
    every item; (n, M) arrays in panel order as fit_cascade takes them."""
    correct, cost, base = check_outcomes(correct, cost, models, min_items=2)
    n = correct.shape[0]
    lams = sorted({float(v) for v in (DEFAULT_LAMBDAS if lambdas is None else lambdas)})
    if not math.isfinite(switch_se):  # only λ = 0's rule chooses: the cascade or one model
        methods = [mm for mm in methods if mm in ("single", "cascade")]
    cands, acc, cst = cross_validate(stage_p, correct, cost, models, query, lams, folds, seed,
                                     methods, bags)
    picked = choose(cands, acc, cst, lams, switch_se, lambda0_se)
    used = sorted({cands[i].method for i in picked}, key=METHODS.index)
    full, meta = fit_candidates(stage_p, correct, cost, models, query, lams, base, used, bags,
                                seed)
    outs = [replay_row(full[cands[i]], models, stage_p, correct, cost, query,
                       meta.get("query_range")) for i in picked]
    picked, outs = _monotone(picked, outs)
    raw = acc[picked].mean(1)
    accuracy, row_cost = _pooled(lams, raw), _pooled(lams, cst[picked].mean(1))
    cis = [None if ci is None else (ci[0] + d, ci[1] + d)  # the interval moves with its row
           for ci, d in zip(bootstrap_ci(acc[picked], n_bootstrap, seed), accuracy - raw,
                            strict=True)]
    rows = []
    for k, (lam, i, ci, out) in enumerate(zip(lams, picked, cis, outs, strict=True)):
        c = cands[i]
        rows.append(replace(
            full[c], lam=lam, fitted_lambda=full[c].fit_lam, accuracy=float(accuracy[k]),
            cost=float(row_cost[k]), accuracy_ci=ci, n_items=n,
            answered={mm: float((out.answered_by == j).mean()) for j, mm in enumerate(models)},
            calls={mm: float(out.calls[:, j].mean()) for j, mm in enumerate(models)}))
    single = correct.mean(0)
    return CascadePolicy(tuple(models), tuple(rows), {
        "objective": "(1 - lambda) * accuracy - lambda * cost / cost_of_last_model",
        "cost_unit": f"mean cost / mean cost of always calling {models[-1]}",
        "fit": f"the cascade bagged over {bags} resamples; λ = 0 and switches to a simpler rule "
               f"({', '.join(methods)}) by {folds}-fold cross-validation (lambda0_se "
               f"{lambda0_se:g}, switch_se {switch_se:g}); accuracy and cost per "
               f"row are out of fold, pooled to fall with λ",
        "n_items": n, "n_bootstrap": n_bootstrap, "seed": seed, "folds": folds, "bags": bags,
        "lambda0_se": lambda0_se, "switch_se": switch_se if math.isfinite(switch_se) else None,
        "start_uses_query": query is not None,
        "query_mean": meta.get("query_mean") or [0.0] * len(QUERY_FEATURES),
        "query_range": meta.get("query_range"),
        "single_accuracy": {mm: float(single[j]) for j, mm in enumerate(models)},
        "chosen": [{"lambda": lam, "method": cands[i].method, "fitted_lambda": cands[i].lam}
                   for lam, i in zip(lams, picked, strict=True)]})
