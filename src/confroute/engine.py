"""The router engine: a loaded model version (scorer + policy), decisions, and hot reload.

A version is loaded only after `confroute.manifest.verify` and `Scorer.load` succeed and its
panel matches the configured one; the engine then swaps one reference, so a request sees either
the old version or the new one, never a mix. A watcher polls `models/current` (symlink target and
the manifest's mtime); a version that fails to load is refused, logged and reported by /healthz,
and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from confroute.errors import BadRequest, NotReady
from confroute.features import FeatureConfig, TokenArrays, answer_features, warm_up
from confroute.formula import FormulaPolicy, escalation_order
from confroute.grading import Grader, get_grader
from confroute.looper import Confidence
from confroute.manifest import MANIFEST, Manifest, ManifestError
from confroute.panel import LlamaCppModel, Panel
from confroute.policies import load_policy
from confroute.policy_api import Decision, FittedPolicy, Policy, check_lambda
from confroute.scoring import Scorer
from confroute.token_filter import tool_call_arrays

log = logging.getLogger("confroute.service")


@dataclass(frozen=True)
class RouterVersion:
    """One verified model version: its scorer, policy and feature settings."""

    path: Path
    version: str
    scorer: Scorer
    policy: FittedPolicy
    config: FeatureConfig
    models: tuple[str, ...]
    loaded_at: float = field(default_factory=time.time)


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


def check_grader(setting: str | None, manifest: Manifest) -> None:
    """ManifestError when a grader setting names another grader than the version was trained
    with: its answer_* and agree_prev signals would be computed differently from what its
    classifiers learned."""
    if setting is not None and setting != manifest.grader:
        raise ManifestError(
            f"CONFROUTE_GRADER={setting} conflicts with version {manifest.version}, whose signals "
            f"were computed with the {manifest.grader!r} grader; unset it or retrain")


def load_version(path: Path, panel: Panel | None, grader: str | None = None) -> RouterVersion:
    """Verify and load a version directory; ManifestError (or ValueError) says why it is refused."""
    scorer = Scorer.load(path)
    manifest = scorer.manifest
    check_grader(grader, manifest)
    if manifest.policy is None:
        raise ManifestError(f"version {manifest.version} has no policy table; retrain it")
    policy = load_policy(manifest.policy)
    models = tuple(scorer.models)
    if panel is not None and [m for m in panel.names if m in models] != list(models):
        raise ManifestError(
            f"version {manifest.version} was trained for panel {list(models)}, but the configured "
            f"panel {panel.name!r} has {panel.names}"
        )
    config = manifest.feature_config.config()
    warm_up()
    return RouterVersion(path, manifest.version, scorer, policy, config, models)


def current_key(models_dir: Path) -> tuple[str, int] | None:
    """What identifies the served version on disk: `current`'s target and its manifest's mtime."""
    target = models_dir if (models_dir / MANIFEST).is_file() else models_dir / "current"
    try:
        real = os.path.realpath(target)
        return real, os.stat(os.path.join(real, MANIFEST)).st_mtime_ns
    except OSError:
        return None


class Engine:
    """Holds the served version; decides; reloads."""

    def __init__(self, models_dir: Path, panel: Panel | None, grader: Grader | str | None,
                 default_lambda: float, looper: Confidence | None = None) -> None:
        self.models_dir = models_dir
        self.panel = panel
        # a name: the setting, checked against each version's manifest (None: the manifest's);
        # a Grader: used as given (tests and benchmarks that build an Engine by hand)
        self._grader_setting = grader if isinstance(grader, str) else None
        self._fixed_grader = not isinstance(grader, str | None)
        self.grader: Grader = grader if not isinstance(grader, str | None) else \
            get_grader(grader or "numeric")
        self.default_lambda = default_lambda
        self.current: RouterVersion | None = None
        self.last_error: str | None = None
        self._key: tuple[str, int] | None = None
        self._failed_key: tuple[str, int] | None = None
        self._aliases = {m.model: m.name for m in panel.models if m.model} if panel else {}
        # a looper config with a fixed formula replaces the version's policy (same interface)
        self.looper = looper if looper and looper.confidence_method != "calibrated" else None
        self._formula: tuple[str, FormulaPolicy] | None = None

    # -- loading -----------------------------------------------------------------------------

    def reload(self) -> RouterVersion:
        """Load what `models/current` points at and swap it in; raise (keeping the old) if bad."""
        key = current_key(self.models_dir)
        if key is None:
            self.last_error = f"no model version at {self.models_dir}/current"
            raise ManifestError(self.last_error + ": train one (confroute train)")
        try:
            new = load_version(Path(key[0]), self.panel, self._grader_setting)
        except Exception as exc:  # whatever breaks loading (onnxruntime too) refuses the version
            self._failed_key = key
            self.last_error = f"refused version at {key[0]}: {exc}"
            log.error("%s; still serving %s", self.last_error, self.version or "nothing")
            raise ManifestError(self.last_error) from exc
        self.current, self._key, self.last_error = new, key, None
        if not self._fixed_grader:
            self.grader = get_grader(new.scorer.manifest.grader)
        log.info("serving model version %s from %s", new.version, new.path)
        return new

    def changed(self) -> bool:
        """Whether `models/current` differs from what is loaded (and was not just refused)."""
        key = current_key(self.models_dir)
        return key is not None and key != self._key and key != self._failed_key

    async def watch(self, interval_s: float,
                    on_reload: Callable[[RouterVersion], None] | None = None) -> None:
        """Poll for a new version every `interval_s` and load it off the event loop."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                try:
                    new = await asyncio.to_thread(self.reload)
                except (ManifestError, ValueError, OSError):
                    continue  # refused and logged; the old version keeps serving
                if on_reload is not None:
                    on_reload(new)

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    def require(self) -> RouterVersion:
        """The served version, or 503 while none is loaded."""
        v = self.current
        if v is None:
            raise NotReady(f"no verified model version is loaded ({self.last_error or 'loading'})")
        return v

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
