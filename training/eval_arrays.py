"""The arrays an evaluation replays on: per item and panel model, calibrated p (and p as each
route or call sequence would see it), correctness, cost and the signals the baselines read.

Built from a feature table (training.table.build_table, or a user's table with the columns
`train --table` takes) and a version's scorer; evaluate.py, the learning curve and the policy fit
(train.py) all score stages through `stage_scorer`, so agree_prev is what the service computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from confroute.features import agreement
from confroute.grading import DEFAULT_GRADER, get_grader
from training.table import QUERY_COLUMNS


@dataclass(frozen=True)
class EvalArrays:
    """(n_items, M) arrays in panel order for the items every panel model answered."""

    models: list[str]
    items: list[str]
    p: np.ndarray  # calibrated P(correct) from the version's scorer (NaN: no logprobs)
    correct: np.ndarray
    cost: np.ndarray  # absolute cost of calling the model on the item
    avg_logprob: np.ndarray
    margin: np.ndarray
    # p for a route (panel indices): agree_prev then sees only the route's earlier answers, as in
    # the service; None: use `p` (agreement with every cheaper panel model) for every route
    route_p: Callable[[Sequence[int]], np.ndarray] | None = None
    # p of model j after the calls `before` (the cascade may skip models); None: `p[:, j]`
    stage_p: Callable[[int, tuple[int, ...]], np.ndarray] | None = None
    query: np.ndarray | None = None  # (n_items, QUERY_COLUMNS) when the table has them
    datasets: np.ndarray | None = None  # (n_items,) dataset of each item

    def p_after(self, j: int, before: tuple[int, ...]) -> np.ndarray:
        return self.stage_p(j, before) if self.stage_p else self.p[:, j]

    def subset(self, mask: np.ndarray) -> EvalArrays:
        """The same arrays on the items where `mask` holds (scores recomputed lazily)."""
        idx = np.flatnonzero(mask)
        sp = self.stage_p

        def stage_p(j: int, before: tuple[int, ...]) -> np.ndarray:
            return (sp(j, before) if sp else self.p[:, j])[idx]

        rp = self.route_p
        return EvalArrays(
            self.models, [self.items[i] for i in idx], self.p[idx], self.correct[idx],
            self.cost[idx], self.avg_logprob[idx], self.margin[idx],
            route_p=(lambda r: rp(r)[idx]) if rp else None, stage_p=stage_p,
            query=None if self.query is None else self.query[idx],
            datasets=None if self.datasets is None else self.datasets[idx])


def arrays_from_table(
    table: pd.DataFrame, models: Sequence[str], feature_names: Sequence[str],
    predict: Callable[[str, np.ndarray], np.ndarray], grader: str = DEFAULT_GRADER,
) -> EvalArrays:
    """Pivot a feature table (training.table.build_table) into arrays, scoring each model's rows."""
    items = sorted(set(table["item_id"]))
    per = [table[table["model"] == m].set_index("item_id").loc[items] for m in models]
    X = [r[list(feature_names)].to_numpy(dtype=np.float32) for r in per]
    # a user's table may have no prediction column (agree_prev is then taken as given)
    none: list[str | None] = [None] * len(items)
    preds = [[v if isinstance(v, str) else None for v in r["prediction"]] if "prediction" in r
             else none for r in per]

    def col(name: str, dtype: type) -> np.ndarray:
        """A column per model; NaN where a user's table lacks it (its baselines drop out)."""
        if name not in table:
            return np.full((len(items), len(models)), np.nan)
        return np.column_stack([r[name].to_numpy(dtype=dtype) for r in per])

    p = np.column_stack([predict(m, x) for m, x in zip(models, X, strict=True)])
    query = (per[0][list(QUERY_COLUMNS)].to_numpy(float)
             if all(c in table for c in QUERY_COLUMNS) else None)
    has_answers = "prediction" in table
    names = list(feature_names)
    return EvalArrays(list(models), items, p, col("correct", bool), col("cost", float),
                      col("avg_logprob", float), col("margin", float),
                      route_p=route_scorer(list(models), X, preds, names, predict, grader)
                      if has_answers else None,
                      stage_p=stage_scorer(list(models), X, preds, names, predict, grader)
                      if has_answers else None,
                      query=query, datasets=per[0]["dataset"].to_numpy(str)
                      if "dataset" in table else None)


def stage_scorer(
    models: list[str], X: list[np.ndarray], preds: list[list[str | None]],
    feature_names: list[str], predict: Callable[[str, np.ndarray], np.ndarray],
    grader: str = DEFAULT_GRADER,
) -> Callable[[int, tuple[int, ...]], np.ndarray]:
    """(model j, earlier calls) -> p of j with agree_prev over those calls' answers, as the
    service computes it (cached per call sequence)."""
    col = feature_names.index("agree_prev") if "agree_prev" in feature_names else None
    judge = get_grader(grader)
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def scored(j: int, before: tuple[int, ...]) -> np.ndarray:
        key = (*before, j) if col is not None else (j,)
        if key not in cache:
            x = X[j].copy()
            if col is not None:
                x[:, col] = [agreement(preds[j][i], [preds[b][i] for b in before], judge)
                             for i in range(len(x))]
            cache[key] = predict(models[j], x)
        return cache[key]

    return scored


def route_scorer(
    models: list[str], X: list[np.ndarray], preds: list[list[str | None]],
    feature_names: list[str], predict: Callable[[str, np.ndarray], np.ndarray],
    grader: str = DEFAULT_GRADER,
) -> Callable[[Sequence[int]], np.ndarray] | None:
    """p per route, agree_prev recomputed over the route's earlier answers (cached per prefix)."""
    if "agree_prev" not in feature_names:
        return None
    scored = stage_scorer(models, X, preds, feature_names, predict, grader)

    def route_p(route: Sequence[int]) -> np.ndarray:
        p = np.full((len(X[0]), len(models)), np.nan)
        for k, j in enumerate(route[:-1]):
            p[:, j] = scored(j, tuple(route[:k]))
        return p

    return route_p
