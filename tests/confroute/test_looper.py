"""The confidence looper's configuration: its example loads as is, bad values are one-line
errors naming the key, and its hybrid formula decides exactly as evaluate's baseline scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from confroute.features import FEATURE_NAMES
from confroute.formula import FormulaPolicy, escalation_order, formula_score
from confroute.grading import NumericGrader
from confroute.looper import HybridWeights, load_router_config
from confroute.panel import ConfigError, Cost, LlamaCppModel, Panel
from confroute.traces import read_traces
from training.evaluate import fixed_formula_score

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seeds" / "confidence-looper-example.yaml"
FIXTURES = Path(__file__).parent / "fixtures"


def test_the_looper_docs_example_loads_as_is() -> None:
    c = load_router_config(SEED).algorithm.confidence
    assert (c.confidence_method, c.threshold, c.escalation_order) == ("hybrid", 0.72,
                                                                      "small_to_large")
    assert (c.cost_quality_tradeoff, c.token_filter, c.on_error) == (0.3, "stop", "skip")
    assert (c.hybrid_weights.logprob_weight, c.hybrid_weights.margin_weight) == (0.5, 0.5)


@pytest.mark.parametrize(("body", "words"), [
    ("algorithm:\n  type: confidence\n  confidence: {confidence_metod: hybrid}\n",
     "confidence_metod"),
    ("algorithm:\n  type: confidence\n  confidence: {confidence_method: entropy}\n",
     "confidence_method"),
    ("algorithm:\n  type: confidence\n  confidence: {threshold: 0.7}\n", "calibrated method fits"),
    ("algorithm:\n  type: confidence\n  confidence: {token_filter: tool_call_args}\n",
     "tool_call_args works with the fixed formulas"),
    ("algorithm:\n  type: confidence\n  confidence: {escalation_order: cost}\n",
     "follows the panel order"),
    ("algorithm:\n  type: confidence\n  budget: {max_cost: -1}\n", "max_cost"),
    ("algorithm:\n  type: static\n", "algorithm.type"),
])
def test_bad_values_name_the_key(tmp_path: Path, body: str, words: str) -> None:
    (tmp_path / "r.yaml").write_text(body)
    with pytest.raises(ConfigError, match=words):
        load_router_config(tmp_path / "r.yaml")


def test_hybrid_decides_as_the_fixed_formula_baseline(tmp_path: Path) -> None:
    """The service's formula score of each real trace equals evaluate's fixed-formula score,
    and the decision is score >= 0.72 (the seed's threshold)."""
    from confroute.features import extract_signals

    conf = load_router_config(SEED).algorithm.confidence
    rule = FormulaPolicy(conf, ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    decided = []
    for t in read_traces(FIXTURES / "traces_sample.jsonl"):
        x = extract_signals(t, previous=[], grader=NumericGrader())
        lp, mg = x[col["avg_logprob"]], x[col["margin"]]
        score = rule.score(lp, mg)
        assert score == pytest.approx(float(fixed_formula_score(np.array(lp), np.array(mg))))
        d = rule.decide(t.model, score, 0.5)
        assert d.decision == ("accept" if score >= 0.72 else "escalate"), (t.item_id, score)
        decided.append(d.decision)
    assert {"accept", "escalate"} <= set(decided)  # the sample exercises both sides
    assert rule.decide("qwen2.5-coder-1.5b", 0.1, 0.5).reason == "last_model"
    assert rule.decide("smollm2-135m", math.nan, 0.5).reason == "no_logprobs"


def test_fixed_formulas_by_hand() -> None:
    """The looper's formulas written out: clamp((lp + 3) / 3, 0, 1), 1 - exp(-m / 3), and their
    weighted sum; NaN (no logprobs) stays NaN."""
    assert formula_score("avg_logprob", -1.5, 0.0) == pytest.approx(0.5)
    assert formula_score("avg_logprob", -4.0, 0.0) == 0.0  # clamped below
    assert formula_score("avg_logprob", 0.5, 0.0) == 1.0  # clamped above
    assert formula_score("margin", -1.0, 3.0) == pytest.approx(1 - math.exp(-1))
    assert formula_score("hybrid", -1.5, 3.0) == pytest.approx(0.5 * 0.5 + 0.5 * (1 - math.exp(-1)))
    uneven = HybridWeights(logprob_weight=0.8, margin_weight=0.2)
    assert formula_score("hybrid", -2.4, 6.0, uneven) == pytest.approx(
        0.8 * 0.2 + 0.2 * (1 - math.exp(-2)))
    assert math.isnan(float(formula_score("hybrid", math.nan, math.nan)))


def test_escalation_orders() -> None:
    panel = Panel(name="p", models=[
        LlamaCppModel(name="a", cost=Cost(per_1k_prompt_tokens=3.0)),
        LlamaCppModel(name="b", cost=Cost(per_1k_prompt_tokens=1.0)),
        LlamaCppModel(name="c", cost=Cost(per_1k_prompt_tokens=2.0))])
    assert escalation_order("size", panel, {}, 0.3) == ["a", "b", "c"]
    assert escalation_order("cost", panel, {}, 0.3) == ["b", "c", "a"]
    acc = {"a": 0.2, "b": 0.9, "c": 0.5}  # (1 - t) * quality + t * price / max price
    assert escalation_order("automix", panel, acc, 0.3) == ["a", "c", "b"]
    with pytest.raises(ValueError, match="automix needs each model's accuracy"):
        escalation_order("automix", panel, {"a": 0.1}, 0.3)
