"""Candidate vs current version on the same held-out in-domain rows, and the promotion gate.

Both versions are scored through the runtime scorer (ONNX + manifest calibration), exactly as the
service would score them, on the same rows: the held-out labeled rows with logprobs. Per model:
n, AUROC, ECE (equal-mass bins), Brier, log loss. Utility at λ, (1 - λ)·accuracy -
λ·mean cost / mean cost of the last panel model, replays each version's own policy on the
held-out requests with a labeled answer from every panel model (full cascades, as exploration
and gold feedback give); with none, the comparison is per model only and says so. The replay
uses the logged agree_prev (agreement with every cheaper model), exact for routes that skip no
cheaper model.

The gate passes when, for every model with at least `min_eval_rows` held-out rows, the candidate
is not worse than current by more than the margins (AUROC drop, ECE and Brier increase; a metric
undefined on either side is not compared; AUROC only with `min_class_rows` rows of each class,
ECE only from `min_ece_rows` rows: below those they are mostly noise), nor in utility (from
`min_utility_items` full cascades).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field

from confroute.cascade import CascadePolicy
from confroute.features import FEATURE_NAMES
from confroute.panel import StrictModel
from confroute.policies import load_policy
from confroute.policy_api import FittedPolicy, utility
from confroute.scoring import Scorer
from training import quality as M
from training.export import jsonable
from training.fit_cascade import Replayed, replay_cascade
from training.fit_policy import Outcome, replay

METRICS = ("auroc", "ece", "brier", "log_loss")
HIGHER_IS_BETTER = {"auroc": True, "ece": False, "brier": False, "utility": True}


class Gate(StrictModel):
    """Promotion margins: how much worse than current the candidate may be (held-out, same rows)."""

    max_auroc_drop: Annotated[float, Field(ge=0)] = 0.0
    max_ece_increase: Annotated[float, Field(ge=0)] = 0.01
    max_brier_increase: Annotated[float, Field(ge=0)] = 0.005
    max_utility_drop: Annotated[float, Field(ge=0)] = 0.0
    # labeled rows each model's classifier is fitted on (in-domain training side + reference)
    min_labeled_rows: Annotated[int, Field(ge=1)] = 50
    # held-out labeled rows a model needs to be judged (fewer: reported, not gated)
    min_eval_rows: Annotated[int, Field(ge=1)] = 20
    # rows ECE needs to be gated: over 10 equal-mass bins it is mostly noise below ~100 rows
    # (about 0.1 at 20 rows even when p is exact); Brier, a proper score, covers calibration there
    min_ece_rows: Annotated[int, Field(ge=1)] = 100
    # rows of each class AUROC needs to be gated: its noise is set by the rarer class (with 3
    # wrong answers among 28 it swings by +-0.3)
    min_class_rows: Annotated[int, Field(ge=1)] = 10
    # full-cascade requests the utility needs to be gated (accuracy over 20 requests: +-0.2)
    min_utility_items: Annotated[int, Field(ge=1)] = 50

    def margin(self, metric: str) -> float:
        return float(getattr(self, {"auroc": "max_auroc_drop", "ece": "max_ece_increase",
                                    "brier": "max_brier_increase",
                                    "utility": "max_utility_drop"}[metric]))


@dataclass(frozen=True)
class Comparison:
    """Held-out numbers per role ("current", "candidate") on the same rows."""

    versions: dict[str, str | None]
    models: dict[str, dict[str, dict[str, float] | None]]  # role -> model -> metrics
    utility: dict[str, dict[str, float]]  # role -> accuracy, cost, utility, n_items
    utility_basis: str  # what the utility was computed on, or why there is none
    lam: float

    def flat(self, role: str) -> dict[str, float]:
        """`<metric>.<model>` and `utility.<key>` for MLflow (finite values only)."""
        out = {f"{k}.{model}": v for model, m in self.models.get(role, {}).items() if m
               for k, v in m.items() if math.isfinite(v)}
        out.update({f"utility.{k}": v for k, v in self.utility.get(role, {}).items()})
        return out

    def to_json(self, verdict: Verdict | None = None) -> str:
        body: dict[str, Any] = asdict(self)
        if verdict is not None:
            body["verdict"] = asdict(verdict)
        return json.dumps(jsonable(body), indent=2) + "\n"


@dataclass(frozen=True)
class Check:
    """One gated comparison: candidate vs current on one metric of one model (or "all")."""

    model: str
    metric: str
    current: float
    candidate: float
    margin: float
    ok: bool


@dataclass(frozen=True)
class Verdict:
    promote: bool
    checks: list[Check]
    reasons: list[str]  # failed checks, or why nothing could be judged
    not_judged: list[str]  # models left out of the gate, and why


def compare(
    held: pd.DataFrame, scorers: Mapping[str, Scorer | None], models: Sequence[str], lam: float,
    bins: int = 10,
) -> Comparison:
    """Per-model metrics and utility of each version on the held-out rows."""
    scored = held[held["has_logprobs"] == 1]
    per = {role: {m: model_metrics(scored, s, m, bins) for m in models}
           for role, s in scorers.items()}
    utility, basis = utilities(held, scorers, list(models), lam)
    versions = {role: s.version if s else None for role, s in scorers.items()}
    return Comparison(versions, per, utility, basis, lam)


def model_metrics(rows: pd.DataFrame, scorer: Scorer | None, model: str,
                  bins: int) -> dict[str, float] | None:
    """n, n_correct and METRICS of one model's rows; None if the version has no such model."""
    if scorer is None or model not in scorer.models:
        return None
    r = rows[rows["model"] == model]
    y = r["correct"].to_numpy(float)
    p = scorer.predict(model, r[list(FEATURE_NAMES)].to_numpy(float)) if len(r) else np.empty(0)
    ok = np.isfinite(p)
    out = {"n": float(ok.sum()), "n_correct": float(y[ok].sum())}
    if ok.any():
        s = M.summary(y[ok], p[ok], bins)
        out.update({k: s[k] for k in METRICS})
    return out


def utilities(
    held: pd.DataFrame, scorers: Mapping[str, Scorer | None], models: list[str], lam: float
) -> tuple[dict[str, dict[str, float]], str]:
    """Each version's policy replayed at λ on the held-out full cascades (or why it cannot be)."""
    counts = held.groupby("item_id")["model"].nunique()
    items = sorted(counts[counts == len(models)].index)
    if not items:
        return {}, ("per-model metrics only: no held-out request has a labeled answer from "
                    "every panel model (gold feedback + exploration log full cascades)")
    wide = [held[held["model"] == m].drop_duplicates("item_id").set_index("item_id").loc[items]
            for m in models]
    correct = np.column_stack([w["correct"].to_numpy(bool) for w in wide])
    cost = np.column_stack([w["cost"].to_numpy(float) for w in wide])
    out = {}
    for role, s in scorers.items():
        if s is None or s.manifest.policy is None or list(s.models) != models:
            continue
        p = np.column_stack([s.predict(m, w[list(FEATURE_NAMES)].to_numpy(float))
                             for m, w in zip(models, wide, strict=True)])
        out[role] = replay_utility(load_policy(s.manifest.policy), models, p, correct, cost,
                                   lam)
    basis = f"{len(items)} held-out requests with a labeled answer from every panel model, λ={lam:g}"
    return out, basis


def replay_utility(policy: FittedPolicy, models: list[str], p: np.ndarray,
                   correct: np.ndarray, cost: np.ndarray, lam: float) -> dict[str, float]:
    """Accuracy, relative cost and utility of the policy's cascade at λ; columns: `models`.
    (Logged rows carry no question text: a cascade starts where its intercepts say.)"""
    out: Outcome | Replayed
    if isinstance(policy, CascadePolicy):
        out = replay_cascade(policy.row(lam), models, lambda s: p[:, s[-1]], correct, cost, None)
    else:
        row = policy.row(lam)
        route = [models.index(m) for m in row.route]
        taus = [row.thresholds[m] for m in row.route[:-1]]
        out = replay(p, correct, cost, route, taus)
    base = float(cost[:, -1].mean())
    acc = float(out.correct.mean())
    rel = float(out.cost.mean()) / base if base > 0 else 0.0
    return {"accuracy": acc, "cost": rel, "utility": utility(acc, rel, lam),
            "n_items": float(len(p))}


def judge(c: Comparison, gate: Gate) -> Verdict:
    """Promote unless the candidate is worse than current beyond a margin on a judged model."""
    if c.versions.get("current") is None:
        return Verdict(True, [], ["no current version: the first one is promoted"], [])
    checks, not_judged = [], []
    for model, cand in c.models["candidate"].items():
        cur = c.models.get("current", {}).get(model)
        n = int(cand["n"]) if cand else 0
        if n < gate.min_eval_rows:
            not_judged.append(f"{model}: {n} held-out rows < gate.min_eval_rows={gate.min_eval_rows}")
        elif cur is None:
            not_judged.append(f"{model}: the current version has no classifier for it")
        else:
            assert cand is not None
            keys, skipped = _gated_metrics(cand, gate)
            checks += [_check(model, k, cur, cand, gate) for k in keys
                       if math.isfinite(cur.get(k, math.nan)) and math.isfinite(cand.get(k, math.nan))]
            not_judged += [f"{model}: {why}" for why in skipped]
    if {"current", "candidate"} <= c.utility.keys():
        n = int(c.utility["candidate"]["n_items"])
        if n >= gate.min_utility_items:
            checks.append(_check("all", "utility", c.utility["current"], c.utility["candidate"],
                                 gate))
        else:
            not_judged.append(f"utility not gated ({n} full cascades < gate.min_utility_items="
                              f"{gate.min_utility_items})")
    if not checks:
        return Verdict(False, [], ["nothing to judge: no model has enough held-out labeled rows "
                                   "with a defined metric; collect more feedback"], not_judged)
    failed = [f"{k.model} {k.metric}: candidate {k.candidate:.4f} vs current {k.current:.4f} "
              f"(allowed {'-' if HIGHER_IS_BETTER[k.metric] else '+'}{k.margin:g})"
              for k in checks if not k.ok]
    return Verdict(not failed, checks, failed, not_judged)


def _gated_metrics(m: Mapping[str, float], gate: Gate) -> tuple[list[str], list[str]]:
    """The metrics these rows can judge, and why the others are left out."""
    n, rare = int(m["n"]), int(min(m["n_correct"], m["n"] - m["n_correct"]))
    keys, skipped = ["brier"], []
    if rare >= gate.min_class_rows:
        keys.append("auroc")
    else:
        skipped.append(f"AUROC not gated ({rare} rows of the rarer class < gate.min_class_rows="
                       f"{gate.min_class_rows})")
    if n >= gate.min_ece_rows:
        keys.append("ece")
    else:
        skipped.append(f"ECE not gated ({n} rows < gate.min_ece_rows={gate.min_ece_rows})")
    return keys, skipped


def _check(model: str, metric: str, cur: Mapping[str, float], cand: Mapping[str, float],
           gate: Gate) -> Check:
    a, b, margin = float(cur[metric]), float(cand[metric]), gate.margin(metric)
    ok = b >= a - margin - 1e-12 if HIGHER_IS_BETTER[metric] else b <= a + margin + 1e-12
    return Check(model, metric, a, b, margin, ok)
