"""The router engine: decisions on answers with the served version (versions.py loads, verifies
and hot-reloads it): signals, one ONNX call per model, the policy at the request's λ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from confroute.errors import BadRequest
from confroute.features import TokenArrays, answer_features
from confroute.formula import FormulaPolicy, escalation_order
from confroute.grading import DEFAULT_GRADER, Grader, get_grader
from confroute.looper import Confidence
from confroute.panel import LlamaCppModel, Panel
from confroute.policy_api import Decision, Policy, check_lambda
from confroute.token_filter import tool_call_arrays
from confroute.versions import RouterVersion, Versions


@dataclass(frozen=True)
class StageInput:
    """One model's answer to decide on."""

    model: str
    arrays: TokenArrays
    text: str | None = None
    finish_reason: str | None = None
    length: int | None = None  # completion tokens, when the server reported them
    previous: Sequence[str | None] = ()  # earlier stages' extracted answers, cheapest first
    called: Sequence[str] = ()  # models called before this one, in order (the policy's state)
    tool_call: bool = False  # the answer calls tools (token_filter tool_call_args reads those)


@dataclass(frozen=True)
class Scored:
    """A decision with what led to it."""

    model: str
    signals: np.ndarray
    p_correct: float
    decision: Decision
    prediction: str | None
    version: str


class Engine:
    """Holds the served version; decides; reloads."""

    def __init__(self, models_dir: Path, panel: Panel | None, grader: Grader | str | None,
                 default_lambda: float, looper: Confidence | None = None) -> None:
        self.panel = panel
        # a name: the setting, checked against each version's manifest (None: the manifest's);
        # a Grader: used as given (tests and benchmarks that build an Engine by hand)
        self._grader_setting = grader if isinstance(grader, str) else None
        self._fixed_grader = not isinstance(grader, str | None)
        self.grader: Grader = grader if not isinstance(grader, str | None) else \
            get_grader(grader or DEFAULT_GRADER)
        self.default_lambda = default_lambda
        self.versions = Versions(models_dir, panel, self._grader_setting, self._loaded)
        self._aliases = {m.model: m.name for m in panel.models if m.model} if panel else {}
        # a looper config with a fixed formula replaces the version's policy (same interface)
        self.looper = looper if looper and looper.confidence_method != "calibrated" else None
        self._formula: tuple[str, FormulaPolicy] | None = None

    # -- the served version (versions.py) --------------------------------------------------

    def _loaded(self, new: RouterVersion) -> None:
        """A newly loaded version: decide with the grader its signals were computed with."""
        if not self._fixed_grader:
            self.grader = get_grader(new.scorer.manifest.grader)

    def require(self) -> RouterVersion:
        """The served version, or 503 while none is loaded (the hot path's one call)."""
        return self.versions.require()

    # -- deciding ----------------------------------------------------------------------------

    def policy(self, v: RouterVersion) -> Policy:
        """What decides: the version's policy, or the looper config's fixed formula."""
        if self.looper is None:
            return v.policy
        if self._formula is None or self._formula[0] != v.version:
            accuracy = dict(v.policy.meta.get("single_accuracy", {}))
            panel = self.panel or Panel(name="version", models=[
                LlamaCppModel(name=m) for m in v.models])
            t = self.default_lambda
            order = escalation_order(self.looper.escalation_order, panel, accuracy, t)
            self._formula = (v.version, FormulaPolicy(self.looper, order))
        return self._formula[1]

    def resolve_model(self, v: RouterVersion, name: str) -> str:
        """A panel model by its name, or by the served model name a server reports."""
        if name in v.models:
            return name
        alias = self._aliases.get(name)
        if alias in v.models:
            return str(alias)
        raise BadRequest(f"unknown model {name!r}; this router's panel is {list(v.models)}")

    def lam(self, value: float | None) -> float:
        """The request's cost_quality_tradeoff (default from settings), checked to be in [0, 1]."""
        if value is None:
            return self.default_lambda
        try:
            return check_lambda(value)
        except (ValueError, TypeError) as exc:
            raise BadRequest(str(exc)) from None

    def _accepts_bare(self, model: str) -> bool:
        """The panel's `no_logprobs: accept` for this model (answers without logprobs stand)."""
        return self.panel is not None and model in self.panel.names and \
            self.panel.get(model).no_logprobs == "accept"

    def for_target(self, v: RouterVersion, target: float) -> tuple[float, dict[str, Any]]:
        """The cheapest λ whose fitted accuracy reaches `target`, with the estimate and its 95%
        interval; 400 naming the best reachable when no setting reaches it."""
        try:
            lam, row = v.policy.for_target_accuracy(target)
        except ValueError as exc:
            raise BadRequest(f"target_accuracy: {exc}") from None
        ci = list(row.accuracy_ci) if row.accuracy_ci else None
        return lam, {"target": target, "lambda": lam, "estimated_accuracy": row.accuracy,
                     "accuracy_ci95": ci, "estimated_cost": row.cost,
                     "basis": f"fitted on {row.n_items} training items"}

    def answer(self, text: str | None) -> str | None:
        """The extracted final answer of a text (None if none)."""
        ext = self.grader.extract(text) if text else None
        return ext.value if ext else None

    def signals(self, v: RouterVersion, s: StageInput) -> tuple[np.ndarray, str | None]:
        """The feature row of one answer (FEATURE_NAMES order) and its extracted answer."""
        arrays = s.arrays
        if s.tool_call and self.looper is not None and self.looper.token_filter == "tool_call_args":
            arrays = tool_call_arrays(arrays)  # the looper's filter: the calls' arguments only
        return answer_features(arrays, text=s.text, finish_reason=s.finish_reason,
                               length=s.length, previous=s.previous, grader=self.grader,
                               config=v.config)

    def decide(self, v: RouterVersion, s: StageInput, lam: float) -> Scored:
        """Score one answer and apply the policy at λ."""
        return self.decide_many(v, [s], lam)[0]

    def decide_many(self, v: RouterVersion, stages: Sequence[StageInput],
                    lam: float | Sequence[float]) -> list[Scored]:
        """Score many answers (one ONNX call per model) and apply the policy to each."""
        lams = [lam] * len(stages) if isinstance(lam, float | int) else list(lam)
        rows = [self.signals(v, s) for s in stages]
        if len(stages) == 1:  # the common case, without the grouping below
            p = v.scorer.predict(stages[0].model, rows[0][0][None])
        else:
            p = np.empty(len(stages))
            for model in {s.model for s in stages}:
                idx = [i for i, s in enumerate(stages) if s.model == model]
                p[idx] = v.scorer.predict(model, np.stack([rows[i][0] for i in idx]))
        out = []
        for i, s in enumerate(stages):
            pi = float(p[i])
            clipped = pi if math.isnan(pi) else min(max(pi, 0.0), 1.0)
            rule = self.policy(v)
            judged = rule.judge(clipped, rows[i][0])  # p, or the looper's formula (p reported)
            decision = rule.decide(s.model, judged, lams[i], (*s.called, s.model))
            if math.isnan(clipped) and decision.decision != "accept" and self._accepts_bare(s.model):
                decision = Decision("accept", None, None, "no_logprobs_accepted", decision.values)
            out.append(Scored(s.model, rows[i][0], clipped, decision, rows[i][1], v.version))
        return out
