"""The cost_quality_tradeoff policy: for each λ, which panel models to call and when to stop.

λ in [0, 1] is the request's `cost_quality_tradeoff`: 0 cares only for accuracy, 1 only for
cost. The policy is a table fitted offline (training/fit_policy.py) with one row per grid λ:

- `route`: the models called at that λ, a subset of the panel in panel order (cheapest first).
  The last model of the route always answers; it need not be the last panel model (at λ = 1 the
  best route is usually the cheapest model alone).
- `thresholds`: τ per non-final route model; its answer is accepted when p_correct >= τ,
  otherwise the next route model is called. p_correct NaN (no logprobs) always escalates. A τ
  above 1 never accepts: the model is called only for its answer (later models' agree_prev).
- `accuracy`, `accuracy_ci` (95% bootstrap over items), `cost`: measured on the fitting rows,
  cost relative to always calling the last panel model.

A λ between grid points uses the nearest grid point; a tie goes to the lower λ (more quality).
Runtime code: the standard library only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

FORMAT = 1


@dataclass(frozen=True)
class Decision:
    """What to do with one model's answer at one λ."""

    decision: Literal["accept", "escalate", "skip", "skip_ahead"]
    threshold: float | None  # τ the p_correct was compared with (None when no comparison)
    next_model: str | None  # the model to call next (None when the answer stands)
    reason: str  # confident | not_worth_escalating | not_confident | no_logprobs | last_model | not_in_route
    # expected utility of each option (cascade policy: "accept" and each later model)
    values: Mapping[str, float] | None = None


@dataclass(frozen=True)
class PolicyRow:
    """The cascade at one grid λ."""

    lam: float
    route: tuple[str, ...]
    thresholds: Mapping[str, float]
    accuracy: float
    cost: float  # mean cost relative to always calling the last panel model
    accuracy_ci: tuple[float, float] | None = None  # 95% bootstrap interval of `accuracy`
    n_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lam, "route": list(self.route), "thresholds": dict(self.thresholds),
            "accuracy": self.accuracy, "cost": self.cost, "n_items": self.n_items,
            "accuracy_ci": list(self.accuracy_ci) if self.accuracy_ci else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyRow:
        ci = d.get("accuracy_ci")
        return cls(
            lam=float(d["lambda"]), route=tuple(d["route"]),
            thresholds={str(k): float(v) for k, v in d["thresholds"].items()},
            accuracy=float(d["accuracy"]), cost=float(d["cost"]), n_items=int(d.get("n_items", 0)),
            accuracy_ci=(float(ci[0]), float(ci[1])) if ci else None,
        )


@dataclass(frozen=True)
class Policy:
    """A fitted λ -> (route, thresholds) table over a panel (`models`, cheapest first)."""

    models: tuple[str, ...]
    rows: tuple[PolicyRow, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)  # how it was fitted (free-form, JSON)

    def __post_init__(self) -> None:
        _validate(self.models, self.rows)

    @property
    def lambdas(self) -> list[float]:
        return list(self._grid)

    kind: str = "route_thresholds"

    def row(self, lam: float) -> PolicyRow:
        """The row of the grid λ nearest to `lam` (ties: the lower λ)."""
        return nearest_row(self.rows, lam, self._grid)

    @cached_property
    def _grid(self) -> tuple[float, ...]:
        """The λ grid, increasing (validated)."""
        return tuple(r.lam for r in self.rows)

    def first(self, lam: float, features: Sequence[float] | None = None) -> Any:
        """The route's first model (this policy does not read the question)."""
        from confroute.cascade import Start

        return Start(self.row(lam).route[0], {}, "route")

    def route(self, lam: float) -> list[str]:
        return list(self.row(lam).route)

    def thresholds(self, lam: float) -> dict[str, float]:
        return dict(self.row(lam).thresholds)

    def after(self, lam: float, model: str) -> str | None:
        """The route model after `model` at λ (None: none is left)."""
        return self._next(self.row(lam), model) if model in self.models else None

    def decide(self, model: str, p_correct: float, lam: float,
               called: Sequence[str] | None = None) -> Decision:
        """Accept, escalate or skip `model`'s answer (calibrated `p_correct`) at trade-off `lam`."""
        p = check_answer(self.models, model, p_correct)
        row = self.row(lam)
        if model not in row.route:
            return Decision("skip", None, self._next(row, model), "not_in_route")
        if model == row.route[-1]:
            return Decision("accept", None, None, "last_model")
        tau = row.thresholds[model]
        nxt = self._next(row, model)
        if math.isnan(p):
            return Decision("escalate", tau, nxt, "no_logprobs")
        if p >= tau:
            return Decision("accept", tau, None, "confident")
        return Decision("escalate", tau, nxt, "not_confident")

    def for_target_accuracy(
        self, target: float, conservative: bool = False
    ) -> tuple[float, PolicyRow]:
        """Cheapest (λ, row) whose accuracy (on the rows the policy was fitted on) reaches `target`.

        The row's `accuracy_ci` states the uncertainty; `conservative=True` asks that the lower
        end of that interval reach the target instead of the point estimate.
        """
        return target_row(self.rows, target, conservative)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, stored in the manifest under "policy"."""
        return {"format": FORMAT, "lambda_lookup": "nearest", "models": list(self.models),
                "rows": [r.to_dict() for r in self.rows], "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        if d.get("format") != FORMAT:
            raise ValueError(f"policy format {d.get('format')!r} is not supported ({FORMAT} is)")
        try:
            rows = tuple(PolicyRow.from_dict(r) for r in d["rows"])
            return cls(tuple(d["models"]), rows, dict(d.get("meta", {})))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed policy table: {exc!r}") from None

    def _next(self, row: PolicyRow, model: str) -> str | None:
        """The first route model after `model` in panel order (None if there is none)."""
        pos = self.models.index(model)
        later = [m for m in row.route if self.models.index(m) > pos]
        return later[0] if later else None


def nearest_row(rows: Sequence[Any], lam: float, grid: Sequence[float] | None = None) -> Any:
    """The row whose grid λ (`.lam`, increasing) is nearest to `lam` (ties: the lower λ);
    `grid`: the rows' λ, when the caller keeps them (the hot path)."""
    lam = check_lambda(lam)
    grid = [r.lam for r in rows] if grid is None else grid
    i = bisect.bisect_left(grid, lam)  # grid[i - 1] < lam <= grid[i]
    if i == len(grid) or (i > 0 and lam - grid[i - 1] <= grid[i] - lam + 1e-12):
        i -= 1  # the lower neighbour is nearer, or a (float) tie
    return rows[i]


def target_row(rows: Sequence[Any], target: float, conservative: bool = False) -> tuple[float, Any]:
    """Cheapest (λ, row) whose accuracy (on the rows the policy was fitted on) reaches `target`.

    The row's `accuracy_ci` states the uncertainty; `conservative=True` asks that the lower end of
    that interval reach the target instead of the point estimate.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target accuracy must be in [0, 1], got {target}")

    def reached(r: Any) -> float:
        return float(r.accuracy_ci[0] if conservative and r.accuracy_ci else r.accuracy)

    ok = [r for r in rows if reached(r) >= target]
    if not ok:
        best = max(rows, key=reached)
        what = "lower 95% bound of accuracy" if conservative else "held-out accuracy"
        raise ValueError(
            f"no setting reaches accuracy {target:.3f}; the best {what} is "
            f"{reached(best):.3f} (λ={best.lam:g}, cost {best.cost:.3f})"
        )
    best = min(ok, key=lambda r: (r.cost, -r.accuracy, -r.lam))
    return best.lam, best


def load_policy(d: Mapping[str, Any]) -> Any:
    """The manifest's policy table as a Policy (format 1) or a CascadePolicy (format 2)."""
    if d.get("format") == 2:
        from confroute.cascade import CascadePolicy

        return CascadePolicy.from_dict(d)
    return Policy.from_dict(d)


def utility(accuracy: Any, relative_cost: Any, lam: float) -> Any:
    """The objective every policy is fitted and judged by: (1 - λ)·accuracy - λ·cost, the cost
    relative to the last panel model's (scalars or arrays). The policy fits, the evaluation and
    the retrain gate all call this one."""
    return (1 - lam) * accuracy - lam * relative_cost


def check_lambda(lam: float) -> float:
    """λ as a float in [0, 1], or a ValueError that says so."""
    value = float(lam)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"cost_quality_tradeoff must be in [0, 1], got {lam}")
    return value


def check_answer(models: Sequence[str], model: str, p_correct: float) -> float:
    """p_correct as a float after checking that `model` is in the panel and p is in [0, 1]/NaN."""
    if model not in models:
        raise ValueError(f"model {model!r} is not in the policy's panel {list(models)}")
    p = float(p_correct)
    if not (math.isnan(p) or 0.0 <= p <= 1.0):
        raise ValueError(f"p_correct must be in [0, 1] or NaN, got {p_correct}")
    return p


def check_grid(models: Sequence[str], rows: Sequence[Any]) -> None:
    """ValueError unless the panel names are unique and the rows' λ (`.lam`) are a non-empty,
    increasing grid in [0, 1] (both policy kinds)."""
    if not models or len(set(models)) != len(models):
        raise ValueError(f"policy needs unique panel model names, got {list(models)}")
    lams = [r.lam for r in rows]
    if not rows or any(not 0 <= x <= 1 for x in lams) or sorted(set(lams)) != lams:
        raise ValueError(f"policy λ grid must be non-empty, increasing and in [0, 1], got {lams}")


def _validate(models: Sequence[str], rows: Sequence[PolicyRow]) -> None:
    """ValueError unless usable: sorted λ grid, routes in panel order, finite τ."""
    check_grid(models, rows)
    for r in rows:
        pos = [models.index(m) if m in models else -1 for m in r.route]
        if not pos or -1 in pos or pos != sorted(set(pos)):
            raise ValueError(f"λ={r.lam}: route {list(r.route)} is not a subset of {list(models)}")
        if set(r.thresholds) != set(r.route[:-1]):
            raise ValueError(f"λ={r.lam}: thresholds {dict(r.thresholds)} != {r.route[:-1]}")
        if not all(math.isfinite(t) for t in r.thresholds.values()):
            raise ValueError(f"λ={r.lam}: thresholds must be finite, got {dict(r.thresholds)}")
