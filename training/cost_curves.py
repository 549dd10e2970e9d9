"""Operating points on the cost/accuracy plane: envelopes, APGR, the oracle bound, target checks.

A method (the router or a baseline) is a list of points {"accuracy", "cost", ...}; cost is relative
to always calling the last panel model. APGR is defined in APGR_DEFINITION.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Point = dict[str, Any]

_GRID = 201  # cost points for the APGR integral
APGR_DEFINITION = (
    "RouteLLM's average performance gap recovered, over the cost axis. weak = the single model of "
    "lowest cost, strong = the single model of highest accuracy. A(c) = the best accuracy a method "
    "reaches at mean cost <= c when a request may use either of two of its operating points (the "
    "upper concave envelope of its points; for the router, mixing two neighbouring λ), or "
    "acc_weak where no point is that cheap. PGR(c) = (A(c) - acc_weak) / (acc_strong - acc_weak), "
    "not clipped. APGR = mean of PGR(c) over 201 costs evenly spaced in [c_weak, c_strong]. "
    "cost_50 / cost_80 = the lowest c with PGR(c) >= 0.5 / 0.8 (null if never). Costs are "
    "relative to always calling the last panel model."
)


def weak_and_strong(singles: list[Point]) -> tuple[Point, Point]:
    """The lowest-cost single model and the most accurate one (ties: the cheaper)."""
    weak = min(singles, key=lambda s: (s["cost"], -s["accuracy"]))
    strong = max(singles, key=lambda s: (s["accuracy"], -s["cost"]))
    return weak, strong


def random_mixing(singles: list[Point]) -> list[Point]:
    """A share w of items to the strongest model, the rest to the cheapest (expected values)."""
    weak, strong = weak_and_strong(singles)
    return [{"weight_strong": float(w),
             "accuracy": float((1 - w) * weak["accuracy"] + w * strong["accuracy"]),
             "cost": float((1 - w) * weak["cost"] + w * strong["cost"])}
            for w in np.linspace(0, 1, 21)]


def upper_hull(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (cost, accuracy) of the upper concave envelope of the points' Pareto frontier."""
    hull: list[tuple[float, float]] = []
    for c, a in sorted((q["cost"], -q["accuracy"]) for q in points):
        a = -a
        if hull and a <= hull[-1][1]:
            continue  # no better than a cheaper point
        while len(hull) >= 2 and _turns_up(hull[-2], hull[-1], (c, a)):
            hull.pop()
        hull.append((c, a))
    return np.array([h[0] for h in hull]), np.array([h[1] for h in hull])


def _turns_up(o: tuple[float, float], m: tuple[float, float], q: tuple[float, float]) -> bool:
    """Is m on or below the chord from o to q (so not a vertex of the concave envelope)?"""
    return (m[0] - o[0]) * (q[1] - o[1]) - (m[1] - o[1]) * (q[0] - o[0]) >= 0


def best_accuracy_at(points: Sequence[Point], budget: np.ndarray, floor: float) -> np.ndarray:
    """Best accuracy at mean cost <= each budget, mixing two operating points (else `floor`)."""
    hc, ha = upper_hull(points)
    return np.maximum(floor, np.interp(budget, hc, ha, left=-np.inf, right=ha[-1]))


def apgr(points: Sequence[Point], weak: Point, strong: Point) -> dict:
    """APGR over [c_weak, c_strong] and the cost to recover 50% / 80% of the gap (module doc)."""
    gap = strong["accuracy"] - weak["accuracy"]
    if gap <= 0 or strong["cost"] <= weak["cost"]:
        return {"apgr": None, "cost_50": None, "cost_80": None}
    grid = np.linspace(weak["cost"], strong["cost"], _GRID)
    pgr = (best_accuracy_at(points, grid, weak["accuracy"]) - weak["accuracy"]) / gap
    hc, ha = upper_hull(points)

    def cost_to(x: float) -> float | None:
        need = weak["accuracy"] + x * gap
        return None if ha[-1] < need - 1e-12 else float(np.interp(need, ha, hc))

    return {"apgr": float(pgr.mean()), "cost_50": cost_to(0.5), "cost_80": cost_to(0.8)}


def apgr_table(methods: dict[str, list[Point]], singles: list[Point]) -> dict:
    weak, strong = weak_and_strong(singles)
    return {"definition": APGR_DEFINITION, "weak": weak["model"], "strong": strong["model"],
            "methods": {name: apgr(pts, weak, strong) for name, pts in methods.items()}}


def oracle_bound(methods: dict[str, list[Point]], bound: list[Point]) -> dict:
    """Does the (concave) oracle curve bound every method's points at matched cost? Worst margin."""
    bc, ba = np.array([q["cost"] for q in bound]), np.array([q["accuracy"] for q in bound])
    worst: tuple[float, str] = (np.inf, "")
    for name, pts in methods.items():
        for q in pts:
            worst = min(worst, (float(np.interp(q["cost"], bc, ba) - q["accuracy"]), name))
    return {"ok": worst[0] >= -1e-9, "worst_margin": worst[0], "closest_method": worst[1]}


def router_vs_baselines(
    curve: list[Point], baselines: dict[str, Any], names: Sequence[str]
) -> dict:
    """Router accuracy at each baseline point's cost (envelope, see APGR) minus the point's."""
    rmin = min(q["cost"] for q in curve)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        pts = [q for q in baselines[name]["points"] if q["cost"] >= rmin - 1e-12]
        if not pts:
            out[name] = {"ok": None, "worst_gap": None, "at_cost": None, "points": 0}
            continue
        cost = np.array([q["cost"] for q in pts])
        gap = best_accuracy_at(curve, cost, -np.inf) - np.array([q["accuracy"] for q in pts])
        i = int(np.argmin(gap))
        out[name] = {"ok": bool(gap[i] >= -1e-9), "worst_gap": float(gap[i]),
                     "at_cost": float(cost[i]), "points": len(pts)}
    return out


def match_best_single(curve: list[Point], baselines: dict[str, Any]) -> dict:
    """Cheapest λ within 1 point of the best single model's accuracy, as a share of its cost."""
    _, best = weak_and_strong(baselines["single_models"]["points"])
    need = best["accuracy"] - 0.01
    ok = [q for q in curve if q["accuracy"] >= need - 1e-12]
    q = min(ok, key=lambda r: r["cost"]) if ok else None
    bound = baselines["oracle"]["points"]
    oc, oa = np.array([r["cost"] for r in bound]), np.array([r["accuracy"] for r in bound])
    oracle_cost = float(np.interp(need, oa, oc)) if oa[-1] >= need else None
    return {
        "best_single": best["model"], "best_accuracy": best["accuracy"], "best_cost": best["cost"],
        "router_lambda": None if q is None else q["lambda"],
        "router_accuracy": None if q is None else q["accuracy"],
        "router_cost_share": None if q is None else q["cost"] / best["cost"],
        "oracle_cost_share": oracle_cost / best["cost"] if oracle_cost is not None else None,
        "ok": bool(q is not None and q["cost"] <= 0.7 * best["cost"]),
    }
