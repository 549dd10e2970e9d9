"""The route-and-thresholds policy: for each λ, which panel models to call and when to stop.

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from confroute.policy_api import (
    Decision,
    Start,
    check_answer,
    check_grid,
    nearest_row,
    target_row,
)

FORMAT = 1


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
class ThresholdPolicy:
    """A fitted λ -> (route, thresholds) table over a panel (`models`, cheapest first): the
    `route_thresholds` kind of the Policy protocol (policy_api.py)."""

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

    def first(self, lam: float, features: Sequence[float] | None = None) -> Start:
        """The route's first model (this policy does not read the question)."""
        return Start(self.row(lam).route[0], {}, "route")

    def judge(self, p_correct: float, signals: Any) -> float:
        return p_correct  # decides on the calibrated p

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
        return {"format": FORMAT, "kind": self.kind, "lambda_lookup": "nearest",
                "models": list(self.models),
                "rows": [r.to_dict() for r in self.rows], "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdPolicy:
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
