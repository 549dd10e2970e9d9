"""`confroute report traffic`: what the router did on live traffic, from its decision log.

Per request (a request id; shadow mode's would-be stages, logged under '<id>:shadow', are read
as the same request's would-be cascade): which model's answer was served (the last accepted
stage, else the last answered one, as feedback reads it), whether it escalated or skipped ahead,
and what it cost. Cost is the panel's price of each logged call: per call, per prompt token
and per completion token, with the tokens its server reported (logged from 2026-12-03); a row
logged without them (an older build, or a /v1/route request or a backend reply without
`usage`) is priced from its `length` signal with no prompt tokens, and the report counts
those rows. "Always the last model" costs each request the last model's logged cost where it
was called, else its mean logged cost (the basis is stated beside the figure). Where feedback
exists: accuracy of the served answers, and per model the ECE of p_correct on labeled rows
against the ECE a perfectly calibrated p would show on as many rows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from confroute.decisions.records import SHADOW_SUFFIX, LoggedDecision, logged_cost
from confroute.decisions.records import served_stage as served
from confroute.grading import Grader
from confroute.panel import Panel
from training import quality as M
from training.inrows import with_late_labels


@dataclass(frozen=True)
class Req:
    """One request as the report reads it."""

    served: str
    calls: int
    escalated: bool
    skipped_ahead: bool
    cost: float
    last_cost: float | None
    correct: bool | None


def traffic_report(decisions: Sequence[LoggedDecision], panel: Panel,
                   grader: Grader | None = None) -> dict[str, Any]:
    """The report's numbers (JSON-safe); with a grader, stages logged after their request's gold
    feedback are graded with it (inrows.with_late_labels)."""
    if grader is not None:
        decisions = with_late_labels(decisions, grader)
    by_req: dict[str, list[LoggedDecision]] = defaultdict(list)
    shadow: dict[str, list[LoggedDecision]] = defaultdict(list)
    for d in decisions:
        if d.request_id.endswith(SHADOW_SUFFIX):
            shadow[d.request_id.removesuffix(SHADOW_SUFFIX)].append(d)
        else:
            by_req[d.request_id].append(d)
    last = panel.names[-1]
    last_costs = [logged_cost(d, panel) for d in decisions if d.model == last]
    mean_last = float(np.mean(last_costs)) if last_costs else None
    reqs = []
    for logged in by_req.values():
        stages = sorted(logged, key=lambda s: s.stage)
        real = [s for s in stages if s.decision != "explore"]
        if not real:
            continue
        s = served(real)
        own_last = [logged_cost(x, panel) for x in stages if x.model == last]
        reqs.append(Req(s.model, len(real), any(x.decision == "escalate" for x in real),
                        any(x.decision == "skip_ahead" for x in real),
                        sum(logged_cost(x, panel) for x in stages),
                        own_last[0] if own_last else mean_last, s.correct))
    n = len(reqs)
    untokened = sum(d.completion_tokens is None for d in decisions)
    out: dict[str, Any] = {
        "requests": n, "panel": panel.names,
        "cost_basis": "panel price per call, prompt token and completion token, with each call's "
                      "reported tokens" + (f"; {untokened} of {len(decisions)} logged calls "
                                           "carry no tokens (older rows, or /v1/route or a "
                                           "backend without usage): priced from their length, "
                                           "prompt tokens left out" if untokened else ""),
        "calls_without_tokens": untokened,
        # a log from another panel: its calls are priced 0 here, which the total must not hide
        "calls_outside_panel": dict(sorted(Counter(
            d.model for d in decisions if d.model not in panel.names).items())),
        "always_last_basis": (f"{last}'s own logged cost where it was called, else its mean "
                              f"logged cost ({len(last_costs)} calls)") if last_costs
        else f"{last} never called: no comparison"}
    if not n:
        return out
    cost = float(sum(r.cost for r in reqs))
    out |= {
        "answered": {m: sum(r.served == m for r in reqs) / n for m in panel.names},
        "escalation_rate": sum(r.escalated for r in reqs) / n,
        "skip_ahead_rate": sum(r.skipped_ahead for r in reqs) / n,
        "two_or_more_calls": sum(r.calls >= 2 for r in reqs) / n,
        "cost": cost, "cost_per_request": cost / n}
    if mean_last is not None:
        always = float(sum(r.last_cost or 0.0 for r in reqs))
        out |= {"always_last_cost": always, "relative_cost": cost / always if always else None,
                "saved": always - cost}
    labeled = [r for r in reqs if r.correct is not None]
    out["labeled_requests"] = len(labeled)
    if labeled:
        out["accuracy"] = sum(bool(r.correct) for r in labeled) / len(labeled)
    out["calibration"] = _calibration(decisions, panel)
    if shadow:
        out["shadow"] = _shadow(shadow, by_req, panel)
    return out


def _calibration(decisions: Sequence[LoggedDecision], panel: Panel) -> dict[str, Any]:
    """Per model, on labeled rows with a p_correct: rows, accuracy, mean p, ECE and the ECE a
    perfectly calibrated p would show on as many rows (95th percentile)."""
    out = {}
    for m in panel.names:
        rows = [d for d in decisions if d.model == m and d.correct is not None
                and d.p_correct is not None and math.isfinite(d.p_correct)]
        if not rows:
            continue
        y = np.array([bool(d.correct) for d in rows])
        p = np.array([d.p_correct for d in rows], dtype=float)
        entry: dict[str, Any] = {"rows": len(rows), "accuracy": float(y.mean()),
                                 "mean_p": float(p.mean())}
        if len(rows) >= 10:
            bins = min(10, len(rows) // 5)
            entry["ece"] = float(M.ece(y, p, bins))
            entry["ece_if_calibrated_p95"] = float(M.ece_if_calibrated(p, bins)[1])
        out[m] = entry
    return out


def _shadow(shadow: dict[str, list[LoggedDecision]], by_req: dict[str, list[LoggedDecision]],
            panel: Panel) -> dict[str, Any]:
    """Shadow mode's would-be figures: who would have answered, at what cost, how accurately."""
    would = [served(sorted(stages, key=lambda s: s.stage)) for stages in shadow.values()]
    would_cost = sum(logged_cost(s, panel) for stages in shadow.values() for s in stages)
    served_cost = sum(logged_cost(s, panel) for rid in shadow for s in by_req.get(rid, []))
    n = len(would)
    labeled = [w for w in would if w.correct is not None]
    stages = [x for group in shadow.values() for x in group if x.decision != "error"]
    return {"requests": n,
            "would_answer": {m: sum(w.model == m for w in would) / n for m in panel.names},
            "served_cost": served_cost, "would_be_cost": would_cost,
            "would_be_relative_cost": would_cost / served_cost if served_cost else None,
            "would_be_accuracy": (sum(bool(w.correct) for w in labeled) / len(labeled))
            if labeled else None, "labeled": len(labeled),
            "labeled_stages": sum(x.correct is not None for x in stages), "stages": len(stages)}


def p_correct_figure(decisions: Sequence[LoggedDecision], panel: Panel, path: Path) -> Path:
    """p_correct histogram per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panel.names), figsize=(4 * len(panel.names), 3),
                             squeeze=False)
    for ax, m in zip(axes[0], panel.names, strict=True):
        p = [d.p_correct for d in decisions if d.model == m and d.p_correct is not None
             and math.isfinite(d.p_correct)]
        ax.hist(p, bins=20, range=(0, 1), color="C0")
        ax.set(title=f"{m} ({len(p)})", xlabel="p_correct")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
