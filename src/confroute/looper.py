"""The confidence looper's configuration, accepted as its users write it (its fixed-formula
policy is confroute.formula).

A router config file holds the looper's block (../shared/seeds/confidence-looper-example.yaml
loads as is):

    algorithm:
      type: confidence
      confidence: {confidence_method, threshold, escalation_order, cost_quality_tradeoff,
                   token_filter, on_error, hybrid_weights: {logprob_weight, margin_weight}}
      budget: {max_cost, max_models, max_wall_time_s}

What each knob does here, beside the looper (README, "Migrating from the confidence looper"):
- `confidence_method`: `calibrated` (the default) is confroute's fitted cascade policy;
  `avg_logprob`, `margin` and `hybrid` are the looper's fixed formulas with one threshold for
  every model: clamp((lp + 3) / 3, 0, 1), 1 - exp(-m / 3), and their weighted sum.
- `threshold`: the fixed formulas' one threshold; the looper's defaults (-1.0 for avg_logprob,
  which accepts every answer, 0.5 for margin and hybrid). Refused with `calibrated`, whose
  thresholds are fitted per model, state and λ.
- `escalation_order`: `size` and `small_to_large` (the panel order: confroute panels are
  declared smallest first), `declared` (the same, said plainly), `cost` (cheapest prompt price
  first) and `automix` (ascending (1 - t) * quality + t * cost_score, t = cost_quality_tradeoff,
  quality = the version's fitted accuracy of each model alone). `calibrated` takes the panel
  order only (its policy was fitted on it).
- `cost_quality_tradeoff`: the default λ of requests that do not set one. In the looper it only
  orders models (automix); here it is also the stopping rule of the calibrated policy.
- `token_filter`: `all` and `stop` read every token but special and stop tokens (what confroute
  always does); `tool_call_args` makes the fixed formulas read only a tool-calling answer's
  arguments (confroute.token_filter; a text answer is read whole, as in the looper). Refused with
  `calibrated`, whose classifiers were fitted on every token of text answers.
- `on_error`: every panel model's `on_error` (skip or fail).
- `budget`: the per-request limits' defaults (max_cost, max_models, deadline).
Unknown keys are refused, naming them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from confroute.panel import StrictModel, load_yaml_model


class HybridWeights(StrictModel):
    logprob_weight: float = Field(0.5, ge=0)
    margin_weight: float = Field(0.5, ge=0)


class Budget(StrictModel):
    """The looper's request-scoped caps that confroute enforces (per-request limits)."""

    max_cost: float | None = Field(None, ge=0)
    max_models: int | None = Field(None, ge=1)
    max_wall_time_s: float | None = Field(None, gt=0, le=3600)


class Confidence(StrictModel):
    confidence_method: Literal["calibrated", "avg_logprob", "margin", "hybrid"] = "calibrated"
    threshold: float | None = None
    escalation_order: Literal["size", "small_to_large", "declared", "cost", "automix"] = "size"
    cost_quality_tradeoff: float | None = Field(None, ge=0, le=1)
    token_filter: Literal["all", "stop", "tool_call_args"] = "all"
    on_error: Literal["skip", "fail"] | None = None
    hybrid_weights: HybridWeights = HybridWeights()

    @model_validator(mode="after")
    def _consistent(self) -> Confidence:
        if self.confidence_method == "calibrated":
            if self.token_filter == "tool_call_args":
                raise ValueError("token_filter: tool_call_args works with the fixed formulas "
                                 "(avg_logprob, margin, hybrid); the calibrated classifiers were "
                                 "fitted on every token of text answers")
            if self.threshold is not None:
                raise ValueError("threshold: the calibrated method fits its thresholds per model "
                                 "and λ; leave threshold out, or use avg_logprob/margin/hybrid")
            if self.escalation_order in ("cost", "automix"):
                raise ValueError(f"escalation_order: {self.escalation_order} with the calibrated "
                                 "method: its policy follows the panel order (size/declared); "
                                 "reorder the panel and retrain instead")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        return self


class Algorithm(StrictModel):
    type: Literal["confidence"]
    confidence: Confidence = Confidence()
    budget: Budget | None = None


class RouterConfig(StrictModel):
    algorithm: Algorithm


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate a router config (panel.ConfigError naming the file and key)."""
    config: RouterConfig = load_yaml_model(path, RouterConfig)
    return config
