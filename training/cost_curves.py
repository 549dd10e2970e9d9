"""Operating points on the cost/accuracy plane: envelopes, APGR, the oracle bound, target checks.

A method (the router or a baseline) is a list of points {"accuracy", "cost", ...}; cost is relative
to always calling the last panel model. APGR is defined in APGR_DEFINITION.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Curve:
    """A method's operating points and, per point, each item's outcome (for the bootstrap)."""

    points: list[Point]
    correct: np.ndarray  # (n_points, n_items): 1/0, or expected correctness for mixtures
    cost: np.ndarray  # (n_points, n_items) relative cost

    def at(self, idx: np.ndarray) -> list[Point]:
        """The points recomputed on the items `idx` (a bootstrap resample)."""
        acc, cost = self.correct[:, idx].mean(1), self.cost[:, idx].mean(1)
        return [{"accuracy": float(a), "cost": float(c)} for a, c in zip(acc, cost, strict=True)]


def mixing_curve(singles: Curve) -> Curve:
    """A share w of items to the strongest single model, the rest to the cheapest (expected)."""
    weak, strong = (singles.points.index(q) for q in weak_and_strong(singles.points))
    w = np.linspace(0, 1, 21)[:, None]
    correct = (1 - w) * singles.correct[weak] + w * singles.correct[strong]
    cost = (1 - w) * singles.cost[weak] + w * singles.cost[strong]
    points = [{"weight_strong": float(x), "accuracy": float(a.mean()), "cost": float(c.mean())}
              for x, a, c in zip(w[:, 0], correct, cost, strict=True)]
    return Curve(points, correct, cost)


def oracle(right: np.ndarray, cost: np.ndarray) -> dict[str, Any]:
    """Cheapest correct model per item (else the last model's cost), and the best curve it bounds.

    (n_items, M) correctness and relative costs in. The curve is the most accuracy any router can
    buy at each cost: per item either its cheapest call or its cheapest correct call, upgrades
    taken in order of extra cost (fractional knapsack).
    """
    any_right = right.any(1)
    cheapest_right = np.where(right, cost, np.inf).min(1)
    point_cost = np.where(any_right, cheapest_right, cost[:, -1])
    low = cost.min(1)
    low_right = right[np.arange(len(low)), cost.argmin(1)]
    extra = np.sort(cheapest_right[any_right & ~low_right] - low[any_right & ~low_right])
    n = len(low)
    accs = (low_right.sum() + np.arange(extra.size + 1)) / n
    costs = (low.sum() + np.concatenate([[0.0], np.cumsum(extra)])) / n
    return {"accuracy": float(any_right.mean()), "cost": float(point_cost.mean()),
            "points": [{"accuracy": float(x), "cost": float(c)}
                       for x, c in zip(accs, costs, strict=True)]}


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
    return _envelope(upper_hull(points), budget, floor)


def _envelope(hull: tuple[np.ndarray, np.ndarray], budget: np.ndarray, floor: float) -> np.ndarray:
    hc, ha = hull
    return np.maximum(floor, np.interp(budget, hc, ha, left=-np.inf, right=ha[-1]))


def apgr(points: Sequence[Point], weak: Point, strong: Point) -> dict:
    """APGR over [c_weak, c_strong] and the cost to recover 50% / 80% of the gap (module doc)."""
    gap = strong["accuracy"] - weak["accuracy"]
    if gap <= 0 or strong["cost"] <= weak["cost"]:
        return {"apgr": None, "cost_50": None, "cost_80": None}
    hc, ha = upper_hull(points)
    grid = np.linspace(weak["cost"], strong["cost"], _GRID)
    pgr = (_envelope((hc, ha), grid, weak["accuracy"]) - weak["accuracy"]) / gap

    def cost_to(x: float) -> float | None:
        need = weak["accuracy"] + x * gap
        return None if ha[-1] < need - 1e-12 else float(np.interp(need, ha, hc))

    return {"apgr": float(pgr.mean()), "cost_50": cost_to(0.5), "cost_80": cost_to(0.8)}


def apgr_table(methods: dict[str, list[Point]], singles: list[Point]) -> dict:
    weak, strong = weak_and_strong(singles)
    return {"definition": APGR_DEFINITION, "weak": weak["model"], "strong": strong["model"],
            "methods": {name: apgr(pts, weak, strong) for name, pts in methods.items()}}


def apgr_gain(a: Curve, b: Curve, singles: Curve, n_boot: int = 200, seed: int = 0) -> dict:
    """APGR(a) - APGR(b), with a paired 95% bootstrap interval over items (weak/strong re-picked)."""
    n = a.correct.shape[1]
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(n_boot, n))
    draws = [d for d in (_gain(a, b, singles, idx) for idx in resamples) if d is not None]
    gain = _gain(a, b, singles, np.arange(n))
    lo, hi = (float(x) for x in np.percentile(draws, [2.5, 97.5])) if draws else (None, None)
    return {"gain": gain, "ci95": [lo, hi], "n_boot": n_boot,
            "ok": gain is not None and gain > 0, "significant": lo is not None and lo > 0}


def _gain(a: Curve, b: Curve, singles: Curve, idx: np.ndarray) -> float | None:
    weak, strong = weak_and_strong(singles.at(idx))
    x, y = apgr(a.at(idx), weak, strong)["apgr"], apgr(b.at(idx), weak, strong)["apgr"]
    return None if x is None or y is None else x - y


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
