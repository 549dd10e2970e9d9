"""The confidence looper's fixed-formula policy (the `formula` kind of policy_api.Policy): one
threshold on a formula of the answer's average logprob and margin for every model, tried in a
fixed escalation order. The looper's knobs are confroute.looper's; what each does is said there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from confroute.features import FEATURE_NAMES
from confroute.looper import Confidence, HybridWeights
from confroute.panel import Panel
from confroute.policy_api import Decision, Start, check_answer, check_lambda

FORMAT = 1
KIND = "formula"
METHOD_DEFAULT_THRESHOLD = {"avg_logprob": -1.0, "margin": 0.5, "hybrid": 0.5}
_AVG_LOGPROB, _MARGIN = FEATURE_NAMES.index("avg_logprob"), FEATURE_NAMES.index("margin")


def formula_score(method: str, avg_logprob: Any, margin: Any,
                  weights: HybridWeights = HybridWeights()) -> Any:
    """The looper's fixed confidence formulas, on numbers or arrays (NaN stays NaN: no
    logprobs). `confroute evaluate`'s fixed-formula baselines are this function."""
    lp = np.clip((np.asarray(avg_logprob, dtype=float) + 3.0) / 3.0, 0.0, 1.0)
    mg = np.clip(1.0 - np.exp(-np.asarray(margin, dtype=float) / 3.0), 0.0, 1.0)
    if method == "avg_logprob":
        return lp
    if method == "margin":
        return mg
    return weights.logprob_weight * lp + weights.margin_weight * mg


def escalation_order(order: str, panel: Panel, accuracy: Mapping[str, float], t: float
                     ) -> list[str]:
    """The models in the order they are tried."""
    names = panel.names
    if order in ("size", "small_to_large", "declared"):
        return names
    price = {m.name: m.cost.per_1k_prompt_tokens + m.cost.per_call for m in panel.models}
    if order == "cost":
        return sorted(names, key=lambda n: (price[n], names.index(n)))
    top = max(price.values()) or 1.0
    missing = [n for n in names if n not in accuracy]
    if missing:
        raise ValueError(f"escalation_order automix needs each model's accuracy; the version "
                         f"has none for {missing}")
    return sorted(names, key=lambda n: ((1 - t) * accuracy[n] + t * price[n] / top,
                                        names.index(n)))


class FormulaPolicy:
    """One threshold on a fixed formula for every model, in a fixed order (the looper's rule).
    `decide` takes the formula's score where the calibrated policy takes p_correct."""

    kind = KIND

    def __init__(self, config: Confidence, order: Sequence[str]) -> None:
        self.config, self.models = config, tuple(order)
        method = config.confidence_method
        self.threshold = config.threshold if config.threshold is not None \
            else METHOD_DEFAULT_THRESHOLD[method]
        self.meta: dict[str, Any] = {"method": method, "threshold": self.threshold}

    def score(self, avg_logprob: float, margin: float) -> float:
        return float(formula_score(self.config.confidence_method, avg_logprob, margin,
                                   self.config.hybrid_weights))

    def judge(self, p_correct: float, signals: Any) -> float:
        """The formula of the answer's signals (p_correct is reported, not judged)."""
        return self.score(float(signals[_AVG_LOGPROB]), float(signals[_MARGIN]))

    def first(self, lam: float, features: Sequence[float] | None = None) -> Start:
        return Start(self.models[0], {}, "escalation_order")

    def after(self, lam: float, model: str) -> str | None:
        i = self.models.index(model) + 1 if model in self.models else len(self.models)
        return self.models[i] if i < len(self.models) else None

    def decide(self, model: str, score: float, lam: float,
               called: Sequence[str] | None = None) -> Decision:
        check_lambda(lam)
        s = check_answer(self.models, model, score)
        nxt = self.after(lam, model)
        if nxt is None:
            return Decision("accept", None, None, "last_model")
        if math.isnan(s):
            return Decision("escalate", self.threshold, nxt, "no_logprobs")
        if s >= self.threshold:
            return Decision("accept", self.threshold, None, "confident")
        return Decision("escalate", self.threshold, nxt, "not_confident")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": KIND, "models": list(self.models),
                "confidence": self.config.model_dump()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FormulaPolicy:
        if d.get("format") != FORMAT or d.get("kind") != KIND:
            raise ValueError(f"not a formula policy (format {d.get('format')!r})")
        try:
            return cls(Confidence.model_validate(d["confidence"]), tuple(d["models"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed formula policy: {exc}") from None

