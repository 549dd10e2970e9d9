"""Figures of an evaluation report: every method on the cost/accuracy plane; routing by λ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.cost_curves import upper_hull

_STYLE = {  # baseline -> (label, matplotlib format)
    "random_mixing": ("random mixing (cheapest/strongest)", "k--"),
    "raw_avg_logprob_threshold": ("one threshold on raw avg_logprob", "C1.-"),
    "fixed_formula": ("fixed formula (hybrid 0.5/0.5), one threshold", "C2.-"),
    "fixed_formula_any_route": ("fixed formula, best route per cost (frontier)", "C2:"),
    "route_thresholds": ("route + thresholds (earlier policy)", "C4s:"),
    "tuned_on_test": ("threshold cascade tuned on these items (hindsight)", "C5d:"),
}


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write cost_accuracy.png and routing.png into out_dir; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    return [plot_cost_accuracy(report, out_dir / "cost_accuracy.png"),
            plot_routing(report, out_dir / "routing.png")]


def _xy(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    pts = sorted(points, key=lambda q: q["cost"])
    return [q["cost"] for q in pts], [q["accuracy"] for q in pts]


def _lambda_labels(curve: list[dict[str, Any]]) -> dict[tuple[float, float], str]:
    """One label per distinct router point: the λ range that lands on it."""
    groups: dict[tuple[float, float], list[float]] = {}
    for q in curve:
        groups.setdefault((q["cost"], q["accuracy"]), []).append(q["lambda"])
    return {k: f"λ={v[0]:g}" if len(v) == 1 else f"λ={v[0]:g}-{v[-1]:g}"
            for k, v in groups.items()}


def plot_cost_accuracy(report: dict[str, Any], path: Path) -> Path:
    """Accuracy against relative cost: router per λ, every baseline, the oracle bound."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    b, table = report["baselines"], report["apgr"]["methods"]
    oc, oa = _xy(b["oracle"]["points"])
    extra = b.get("fixed_formula", {}).get("points", [])
    right = max(q["cost"] for q in report["curve"] + extra)
    ax.plot([*oc, max(right, oc[-1])], [*oa, oa[-1]], ":", color="grey", label="oracle bound")
    ax.plot(b["oracle"]["cost"], b["oracle"]["accuracy"], "*", color="grey", ms=12,
            label="oracle (cheapest correct model)")
    for name, (label, fmt) in _STYLE.items():
        if name not in b:  # a feature table without the signals of that baseline
            continue
        apgr = table[name]["apgr"]
        xy = upper_hull(b[name]["points"]) if name.endswith("any_route") else _xy(b[name]["points"])
        ax.plot(*xy, fmt, ms=3, lw=1, label=label + ("" if apgr is None else f" (APGR {apgr:.2f})"))
    for q in b["single_models"]["points"]:
        ax.plot(q["cost"], q["accuracy"], "s", ms=8, label=f"{q['model']} alone")
    router = table["router"]["apgr"]
    ax.plot(*_xy(report["curve"]), "o-", color="C3", lw=2,
            label="confroute router" + ("" if router is None else f" (APGR {router:.2f})"))
    for (cost, acc), lams in _lambda_labels(report["curve"]).items():
        ax.annotate(lams, (cost, acc), fontsize=7, xytext=(4, -10), textcoords="offset points",
                    color="C3")
    ax.set(xlabel=f"cost relative to always calling {report['models'][-1]}", ylabel="accuracy",
           title=f"{report['version']}: {report['n_items']} held-out items")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_routing(report: dict[str, Any], path: Path) -> Path:
    """Share of queries answered by each panel model, per λ (stacked)."""
    import matplotlib.pyplot as plt

    lams = [q["lambda"] for q in report["curve"]]
    shares = [[q["answered"][m] for q in report["curve"]] for m in report["models"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(lams, shares, labels=report["models"], alpha=0.8)
    ax.set(xlabel="cost_quality_tradeoff λ", ylabel="share of queries answered", ylim=(0, 1),
           title="who answers, by λ")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


_GEN = {"router": ("confroute router", "C0o-"), "single_models": ("single-model hull", "k^--"),
        "route_thresholds": ("route + thresholds (earlier policy)", "C3s:"),
        "tuned_on_test": ("cascade tuned on the test items (hindsight)", "C5d:"),
        "raw_avg_logprob_threshold": ("one threshold on avg_logprob", "C1.-"),
        "fixed_formula": ("fixed formula, one threshold", "C2.-")}


def plot_generalisation(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """learning_curve.png (APGR against training items) and leave_one_set_out.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    if "learning_curve" in report:
        rows = report["learning_curve"]["summary"]
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [r["n_train"] for r in rows]
        for name, (label, fmt) in _GEN.items():
            if all(name in r for r in rows):
                mean = [r[name]["mean"] for r in rows]
                err = [[m - r[name]["lo"] for m, r in zip(mean, rows, strict=True)],
                       [r[name]["hi"] - m for m, r in zip(mean, rows, strict=True)]]
                ax.errorbar(x, mean, yerr=err, fmt=fmt, label=label, capsize=3)
        ax.set(xlabel="training items", ylabel="APGR on held-out items",
               title="Learning curve (mean, 2.5-97.5% of repeats)")
        ax.legend(fontsize=7)
        paths.append(out_dir / "learning_curve.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if "leave_one_set_out" in report:
        runs = report["leave_one_set_out"]["runs"]
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [n for n in _GEN if all(r["apgr"].get(n) is not None for r in runs)]
        w = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            ax.bar(np.arange(len(runs)) + k * w, [r["apgr"][name] for r in runs], w,
                   label=_GEN[name][0])
        ax.set_xticks(np.arange(len(runs)) + 0.4 - w / 2, [r["left_out"] for r in runs])
        ax.set(ylabel="APGR on the left-out set", title="Leave one set out")
        ax.legend(fontsize=7)
        paths.append(out_dir / "leave_one_set_out.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
