"""The cascade policy: pick the first model before any call, then accept, escalate or skip ahead
after every answer, by expected utility at the request's λ.

The utility of serving an answer is `(1 - λ) * correct - λ * cost / cost_of_last_model`; costs
already paid are the same for every option, so a decision compares only what lies ahead:

- accept the answer of the model that just answered, with calibrated p:  `(1 - λ) * p`
- call a later panel model j (the next one: escalate; a later one: skip ahead): `a_j + b_j * p`,
  the fitted expected utility of calling j and going on optimally from there, less j's cost.
- before any call, start at model j: `w_j · [1, query features]` (query.py).

The lines are fitted offline (training/fit_cascade.py) by backward induction on cross-fitted
rows, one set per state (the models called so far) and grid λ; slopes are kept in [0, 1 - λ], so
accepting is monotone in p: a state accepts exactly when p >= its `threshold`. A state's `mean_p`
stands in for p when an answer has no logprobs (then only a call is possible, unless none is
left). The last panel model always stands. A λ between grid points uses the nearest one (ties:
the lower λ), as policy.ThresholdPolicy does. A grid λ may be served by the lines of a lower grid λ
(`fitted_lambda`, see training/fit_cascade.py): where its own fit came out dearer than the lower
λ's, so that cost never rises with λ. An accepted answer's reason is `confident` where it is at
least as likely right as any model ahead is on average, else `not_worth_escalating`. Runtime
code: numpy-free, microseconds per decision.
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
from confroute.query import QUERY_FEATURES

FORMAT = 2
KIND = "cascade"


def state_key(called: Sequence[str]) -> str:
    return "+".join(called)


@dataclass(frozen=True)
class State:
    """After the models in `called` answered (the last one just now): the options ahead."""

    called: tuple[str, ...]
    options: Mapping[str, tuple[float, float]]  # later model -> (a, b): utility a + b * p
    threshold: float  # accept iff p >= threshold (> 1: never accepts)
    mean_p: float  # p used to choose the call when the answer has no logprobs

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "mean_p": self.mean_p,
                "options": {m: list(ab) for m, ab in self.options.items()}}


@dataclass(frozen=True)
class CascadeRow:
    """The cascade at one grid λ, and how it did on the rows it was fitted on."""

    lam: float
    start: Mapping[str, tuple[float, ...]]  # model -> weights over [1, *QUERY_FEATURES]
    states: Mapping[str, State]  # state_key(called) -> State
    accuracy: float
    cost: float  # mean cost relative to always calling the last panel model
    accuracy_ci: tuple[float, float] | None = None
    n_items: int = 0
    answered: Mapping[str, float] = field(default_factory=dict)  # share answered per model
    calls: Mapping[str, float] = field(default_factory=dict)  # share of items calling each
    fitted_lambda: float | None = None  # the λ its lines were fitted at (None: `lam`)
    # which candidate rule serves this λ (training/select_policy.py): cascade (fitted lines),
    # thresholds (one route, a threshold per model), global_threshold, single (one model)
    source: str = "cascade"

    @property
    def fit_lam(self) -> float:
        """The λ of this row's lines: its own, or the lower λ's whose lines serve it."""
        return self.lam if self.fitted_lambda is None else self.fitted_lambda

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lam, "fitted_lambda": self.fit_lam,
            "start": {m: list(w) for m, w in self.start.items()},
            "states": {k: s.to_dict() for k, s in self.states.items()},
            "accuracy": self.accuracy, "cost": self.cost, "n_items": self.n_items,
            "accuracy_ci": list(self.accuracy_ci) if self.accuracy_ci else None,
            "answered": dict(self.answered), "calls": dict(self.calls), "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CascadeRow:
        ci = d.get("accuracy_ci")
        states = {
            k: State(tuple(k.split("+")), {m: (float(ab[0]), float(ab[1]))
                                           for m, ab in s["options"].items()},
                     float(s["threshold"]), float(s["mean_p"]))
            for k, s in d["states"].items()}
        return cls(
            lam=float(d["lambda"]), start={m: tuple(float(x) for x in w)
                                           for m, w in d["start"].items()},
            states=states, accuracy=float(d["accuracy"]), cost=float(d["cost"]),
            accuracy_ci=(float(ci[0]), float(ci[1])) if ci else None,
            n_items=int(d.get("n_items", 0)),
            answered={str(k): float(v) for k, v in d.get("answered", {}).items()},
            calls={str(k): float(v) for k, v in d.get("calls", {}).items()},
            fitted_lambda=float(d["fitted_lambda"]) if d.get("fitted_lambda") is not None else None,
            source=str(d.get("source", "cascade")))


@dataclass(frozen=True)
class CascadePolicy:
    """A fitted λ -> cascade table over a panel (`models`, cheapest first)."""

    models: tuple[str, ...]
    rows: tuple[CascadeRow, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    kind: str = KIND

    def __post_init__(self) -> None:
        _validate(self.models, self.rows)

    @cached_property
    def _following(self) -> dict[str, str | None]:
        """Each panel model's next one (what `escalate` means; a later one is `skip_ahead`)."""
        return {m: self.models[i + 1] if i + 1 < len(self.models) else None
                for i, m in enumerate(self.models)}

    @cached_property
    def _grid(self) -> tuple[float, ...]:
        """The λ grid, increasing (validated)."""
        return tuple(r.lam for r in self.rows)

    @property
    def lambdas(self) -> list[float]:
        return list(self._grid)

    def row(self, lam: float) -> CascadeRow:
        return nearest_row(self.rows, lam, self._grid)

    def route(self, lam: float) -> list[str]:
        """Models this λ may call, cheapest first (any start, any state's options)."""
        r = self.row(lam)
        used = set(r.start) | {m for s in r.states.values() for m in (*s.called, *s.options)}
        return [m for m in self.models if m in used]

    def first(self, lam: float, features: Sequence[float] | None = None) -> Start:
        """The model to call first: the start with the highest fitted utility at the query's
        features; without them (no question text) at the training rows' mean features."""
        r = self.row(lam)
        x = list(features) if features is not None else list(self.meta.get("query_mean", ()))
        reason = "query_features" if features is not None else "no_question"
        if len(x) != len(QUERY_FEATURES) or not all(math.isfinite(v) for v in x):
            x, reason = list(self.meta.get("query_mean", [0.0] * len(QUERY_FEATURES))), "no_question"
        span = self.meta.get("query_range")  # no extrapolation past the fitting rows' range
        if span:
            x = [min(max(v, lo), hi) for v, (lo, hi) in zip(x, span, strict=True)]
        values = _start_values(r.start, x)
        best = max(values, key=lambda m: (values[m], -self._pos[m]))
        # a question's first model never gets dearer as λ rises: no dearer than its first model at
        # any lower grid λ (the start lines of neighbouring λ are fitted apart and can cross)
        own = best
        for start in self._lower_starts[self._grid.index(r.lam)]:
            low = _start_values(start, x)
            other = max(low, key=lambda m: (low[m], -self._pos[m]))
            if self._pos[other] < self._pos[best]:
                best = other
        if best != own:
            reason = f"{reason}_capped_by_lower_lambda"
        return Start(best, values, reason)

    @cached_property
    def _pos(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.models)}

    @cached_property
    def _lower_starts(self) -> list[list[Mapping[str, tuple[float, ...]]]]:
        """Per grid row, the distinct start lines of the rows below it (not its own)."""
        out, seen, distinct = [], set(), []  # type: ignore[var-annotated]
        for r in self.rows:
            out.append(list(distinct))
            key = tuple(sorted(r.start.items()))
            if key not in seen:
                seen.add(key)
                distinct.append(r.start)
        return out

    def judge(self, p_correct: float, signals: Any) -> float:
        return p_correct  # decides on the calibrated p

    def after(self, lam: float, model: str) -> str | None:
        """The panel model after `model` (where a failed call goes on; None: none is left)."""
        i = self.models.index(model) + 1 if model in self.models else len(self.models)
        return self.models[i] if i < len(self.models) else None

    def decide(self, model: str, p_correct: float, lam: float,
               called: Sequence[str] | None = None) -> Decision:
        """Accept, escalate or skip ahead after `model` answered with calibrated `p_correct`;
        `called` is every model called so far, `model` last (default: `model` alone)."""
        p = check_answer(self.models, model, p_correct)
        r = self.row(lam)
        state = r.states.get(state_key(called or (model,))) or r.states.get(model)
        if state is None or not state.options:
            return Decision("accept", None, None, "last_model")
        no_lp = math.isnan(p)
        q = state.mean_p if no_lp else p
        values: dict[str, float] = {}
        nxt, best = "", -math.inf
        for m, (a, b) in state.options.items():  # panel order: a tie goes to the cheaper model
            v = values[m] = a + b * q
            if v > best:
                nxt, best = m, v
        values["accept"] = (1.0 - r.fit_lam) * q
        if not no_lp and p >= state.threshold:
            return Decision("accept", state.threshold, None, self._accept_reason(p, state), values)
        following = self._following[model]
        reason = "no_logprobs" if no_lp else "not_confident"
        if nxt == following:
            return Decision("escalate", state.threshold, nxt, reason, values)
        return Decision("skip_ahead", state.threshold, nxt, reason, values)

    def _accept_reason(self, p: float, state: State) -> str:
        """`confident` where the answer is at least as likely right as any model it could go on
        to is on average (accepting wins on p itself); otherwise `not_worth_escalating`: a
        better answer is likely ahead but not worth its cost at this λ. Without the fitted
        single-model accuracies (older versions) every acceptance reads `confident`."""
        acc = self.meta.get("single_accuracy") or {}
        ahead = [float(acc[m]) for m in state.options if m in acc]
        return "confident" if not ahead or p >= max(ahead) else "not_worth_escalating"

    def for_target_accuracy(self, target: float, conservative: bool = False
                            ) -> tuple[float, CascadeRow]:
        return target_row(self.rows, target, conservative)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": KIND, "lambda_lookup": "nearest",
                "models": list(self.models), "query_features": list(QUERY_FEATURES),
                "rows": [r.to_dict() for r in self.rows], "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CascadePolicy:
        if d.get("format") != FORMAT or d.get("kind") != KIND:
            raise ValueError(f"not a cascade policy (format {d.get('format')!r})")
        if list(d.get("query_features", [])) != list(QUERY_FEATURES):
            raise ValueError(f"policy query features {d.get('query_features')} differ from this "
                             f"runtime's {list(QUERY_FEATURES)}")
        try:
            rows = tuple(CascadeRow.from_dict(r) for r in d["rows"])
            return cls(tuple(d["models"]), rows, dict(d.get("meta", {})))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            raise ValueError(f"malformed cascade policy table: {exc!r}") from None


def _start_values(start: Mapping[str, tuple[float, ...]], x: Sequence[float]) -> dict[str, float]:
    return {m: w[0] + sum(wi * xi for wi, xi in zip(w[1:], x, strict=True))
            for m, w in start.items()}


def _validate(models: Sequence[str], rows: Sequence[CascadeRow]) -> None:
    """ValueError unless usable: sorted λ grid, states and options over the panel, finite values."""
    check_grid(models, rows)
    pos = {m: i for i, m in enumerate(models)}
    for r in rows:
        if not 0.0 <= r.fit_lam <= 1.0:
            raise ValueError(f"λ={r.lam}: fitted_lambda {r.fitted_lambda} is not in [0, 1]")
        if not r.start or any(m not in pos or len(w) != 1 + len(QUERY_FEATURES)
                              or not all(math.isfinite(x) for x in w) for m, w in r.start.items()):
            raise ValueError(f"λ={r.lam}: start weights must name panel models and hold "
                             f"{1 + len(QUERY_FEATURES)} finite numbers")
        for key, s in r.states.items():
            idx = [pos.get(m, -1) for m in s.called]
            if -1 in idx or idx != sorted(set(idx)):
                raise ValueError(f"λ={r.lam}: state {key!r} is not models of the panel in order")
            bad = [m for m in s.options if pos.get(m, -1) <= idx[-1]]
            vals = [x for ab in s.options.values() for x in ab] + [s.threshold, s.mean_p]
            if bad or not all(math.isfinite(x) for x in vals):
                raise ValueError(f"λ={r.lam}: state {key!r} has options {bad or 'non-finite'}")
