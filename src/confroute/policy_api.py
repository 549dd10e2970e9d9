"""What every policy kind is: the decision types, the `Policy` protocol the runner and engine call,
and the checks and λ lookups the kinds share.

A policy decides twice per request: `first` picks the model to call before any call, and
`decide` judges each answer (accept, escalate to the next model, skip ahead, or skip a model not
on the route). `judge` says which number `decide` reads: the calibrated p_correct for the fitted
kinds, a fixed formula of the answer's signals for the looper's formula kind. The kinds
(confroute.policies registers them): `route_thresholds` (policy.py), `cascade` (cascade.py),
`formula` (looper.py). Runtime code: the standard library only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable


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
class Start:
    """The first model to call, with the expected utility of each start."""

    model: str
    values: Mapping[str, float]
    reason: str  # query_features | no_question, + _capped_by_lower_lambda where a lower λ's
    # first model was cheaper and is kept; session: the conversation's previous turn was
    # answered by a dearer model (sessions.py), which starts instead


@runtime_checkable
class Policy(Protocol):
    """What the engine and the runner call, whatever the kind."""

    @property
    def kind(self) -> str:
        """The registry name (confroute.policies.KINDS)."""

    @property
    def models(self) -> tuple[str, ...]:
        """The panel, cheapest first."""

    @property
    def meta(self) -> Mapping[str, Any]:
        """How it was fitted (JSON-safe)."""

    def first(self, lam: float, features: Sequence[float] | None = None) -> Start:
        """The model to call before any call, at λ, from the question's features."""

    def after(self, lam: float, model: str) -> str | None:
        """The model called after `model` when its answer is not accepted (None: none left)."""

    def judge(self, p_correct: float, signals: Any) -> float:
        """The number `decide` compares: p_correct, or a formula of the answer's signals (a
        row indexed as confroute.features.FEATURE_NAMES)."""

    def decide(self, model: str, score: float, lam: float,
               called: Sequence[str] | None = None) -> Decision:
        """Accept, escalate or skip `model`'s answer at λ; `called`: the models so far, in order."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a manifest stores (confroute.policies.load_policy reads it back)."""


@runtime_checkable
class FittedPolicy(Policy, Protocol):
    """A policy fitted to a λ grid: what a router version serves (it also answers
    `target_accuracy` from the accuracy it measured per grid λ)."""

    @property
    def rows(self) -> tuple[Any, ...]:
        """One per grid λ, increasing."""

    @property
    def lambdas(self) -> list[float]: ...

    def row(self, lam: float) -> Any:
        """The grid row that serves λ."""

    def for_target_accuracy(self, target: float, conservative: bool = False
                            ) -> tuple[float, Any]:
        """The cheapest (λ, row) whose measured accuracy reaches `target`."""


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
