"""Bench: the panel zoo. Fit the router on T labeled questions of each simulated panel and judge it
on 3,000 it never saw, beside baselines tuned on those very questions (training/zoo.py draws the
panels; its docstring says how each range was chosen).

Per panel the router is what `confroute train --table` fits: one calibrated classifier per model
on its raw confidence column (logistic + isotonic, cross-fitted, -inf clipped as training does),
then the policy (training/select_policy.py) from the out-of-fold p. On the test questions:

- router: the fitted policy replayed at every grid λ;
- cascade_only: the fitted cascade alone (the policy before issue 35), for the gain;
- global_threshold: one threshold on the calibrated p for every model of the full panel route,
  swept over its quantiles on the test questions;
- single-model hull, and `tuned`: routes of up to 3 models with a threshold per model, grid-searched
  on the test questions' outcomes (thresholds at quantiles of p); oracle.

APGR as training/cost_curves.py defines it. `cost_share`: the cheapest point within one accuracy
point of the strongest single model, as a share of that model's cost (inf: never within a point).

    python bench/panel_zoo.py --panels 20 --train 300 --out var/zoo    [--jobs 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from training.cost_curves import apgr_table, match_best_single, oracle
from training.eval_arrays import EvalArrays
from training.evaluate import router_curve, single_models, threshold_curve
from training.fit import CorrectnessClassifier
from training.fit_cascade import fit_cascade
from training.fit_policy import fit_policy
from training.select_policy import BAGS, LAMBDA0_SE, SWITCH_SE, fit_selected
from training.zoo import ZooPanel, draw_panel

N_TEST = 3000
TIE = 0.005  # "not below one threshold": router >= threshold - TIE


def calibrate(train: ZooPanel, test: ZooPanel, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold p on the training questions and p on the test ones, per model."""
    oof, p = np.empty(train.correct.shape), np.empty(test.correct.shape)
    for j in range(len(train.models)):
        x = train.confidence[:, j]
        finite = x[np.isfinite(x)]
        lo = finite.min() if finite.size else 0.0
        clf = CorrectnessClassifier("logistic", "isotonic", None, 5, 0.01, seed)
        clf.fit(np.where(np.isfinite(x), x, lo)[:, None], train.correct[:, j])
        oof[:, j] = clf.oof_proba_
        xt = test.confidence[:, j]
        p[:, j] = clf.predict_proba(np.where(np.isfinite(xt), xt, lo)[:, None])[:, 1]
    return oof, p


def _arrays(panel: ZooPanel, p: np.ndarray) -> EvalArrays:
    nan = np.full(p.shape, np.nan)
    return EvalArrays(panel.models, [str(i) for i in range(len(p))], p, panel.correct,
                      panel.cost, nan, nan)


def one_panel(seed: int, n_train: int, knobs: dict[str, float] | None = None) -> dict[str, Any]:
    """Everything the summary reads, for one panel."""
    t0 = time.perf_counter()
    train, test = draw_panel(seed, n_train + N_TEST).split(n_train)
    oof, p = calibrate(train, test, seed)
    models = train.models

    def stage_p(j: int, _before: tuple[int, ...]) -> np.ndarray:
        return oof[:, j]

    a = _arrays(test, p)
    base = float(test.cost[:, -1].mean())
    router = fit_selected(stage_p, train.correct, train.cost, models, n_bootstrap=0, seed=seed,
                          **(knobs or {}))
    before = fit_cascade(stage_p, train.correct, train.cost, models, n_bootstrap=0, seed=seed)
    tuned = fit_policy(p, test.correct, test.cost, models, router.lambdas, n_bootstrap=0,
                       max_route=3)
    singles = single_models(a, base)
    curves = {"router": router_curve(a, router, base), "cascade_only": router_curve(a, before, base),
              "global_threshold": threshold_curve(p, a, base), "tuned": router_curve(a, tuned, base),
              "hull": singles}
    orc = oracle(test.correct, test.cost / base)
    table = apgr_table({k: c.points for k, c in curves.items()} | {"oracle": orc["points"]},
                       singles.points)["methods"]
    refs = {"single_models": {"points": singles.points}, "oracle": orc}
    share = {k: match_best_single(curves[k].points, refs)["router_cost_share"]
             for k in ("router", "cascade_only", "tuned")}
    strongest = max(singles.points, key=lambda q: (q["accuracy"], -q["cost"]))
    lam0 = {k: curves[k].points[0] for k in ("router", "cascade_only")}
    return {
        "seed": seed, "models": len(models), "kinds": train.kinds,
        "price_ratio": float(train.price[-1] / train.price[0]),
        "accuracy": [float(x) for x in test.correct.mean(0)],
        "apgr": {k: v["apgr"] for k, v in table.items()},
        "cost_share": {k: (None if v is None else float(v)) for k, v in share.items()},
        "lambda0_cost_over_strongest": {k: v["cost"] / strongest["cost"] for k, v in lam0.items()},
        "lambda0_calls_per_question": {k: float(sum(v["calls"].values())) for k, v in lam0.items()},
        "lambda0_accuracy_minus_strongest": {k: v["accuracy"] - strongest["accuracy"]
                                             for k, v in lam0.items()},
        "chosen": [c["method"] for c in router.meta["chosen"]],
        "seconds": time.perf_counter() - t0,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary object of zoo.json (panels where APGR is defined: strongest dearer than weak)."""
    ok = [r for r in rows if all(r["apgr"][k] is not None for k in ("router", "global_threshold"))]

    def col(method: str, what: str = "apgr") -> np.ndarray:
        return np.array([r[what][method] for r in ok], dtype=float)

    router, thr, tuned, hull = col("router"), col("global_threshold"), col("tuned"), col("hull")
    before = col("cascade_only")

    def ratio(method: str) -> np.ndarray:
        num = np.array([np.inf if r["cost_share"][method] is None else r["cost_share"][method]
                        for r in ok])
        den = np.array([np.inf if r["cost_share"]["tuned"] is None else r["cost_share"]["tuned"]
                        for r in ok])
        return np.where(np.isinf(den), np.nan, num / den)

    def versus(x: np.ndarray, method: str) -> dict[str, float]:
        lam0 = np.array([r["lambda0_cost_over_strongest"][method] for r in rows])
        return {
            "share_not_below_threshold": float(np.mean(x >= thr - TIE)),
            "mean_gain_vs_threshold": float(np.mean(x - thr)),
            "mean_gap_to_tuned": float(np.mean(tuned - x)),
            # APGR divides by the weak-strong accuracy gap: on panels of near-equal models one
            # point of accuracy is many points of APGR, so the medians say what a typical panel sees
            "median_gain_vs_threshold": float(np.median(x - thr)),
            "median_gap_to_tuned": float(np.median(tuned - x)),
            "median_cost_ratio_to_tuned": float(np.nanmedian(ratio(method))),
            "max_lambda0_cost_over_strongest": float(lam0.max()),
            "share_lambda0_within_strongest_cost": float(np.mean(lam0 <= 1.0 + 1e-9)),
            "share_not_below_hull": float(np.mean(x >= hull - TIE))}

    return {
        "panels": len(rows), "panels_with_apgr": len(ok), **versus(router, "router"),
        "mean_apgr": {"router": float(router.mean()), "cascade_only": float(before.mean()),
                      "global_threshold": float(thr.mean()), "hull": float(hull.mean()),
                      "tuned": float(tuned.mean()), "oracle": float(col("oracle").mean())},
        "cascade_only": versus(before, "cascade_only"),
        "router_within_one_point_share": float(np.mean([r["cost_share"]["router"] is not None
                                                        for r in ok])),
        "mean_lambda0_calls_per_question": float(np.mean(
            [r["lambda0_calls_per_question"]["router"] for r in rows])),
    }


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Per panel, the router's and the cascade alone's APGR minus one threshold's and the tuned
    cascade's, against the accuracy spread of the panel's single models (APGR divides by the
    weak-strong gap, so narrow panels spread widely: the x axis shows which those are)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["apgr"]["router"] is not None and r["apgr"]["global_threshold"]
          is not None]
    spread = [max(r["accuracy"]) - min(r["accuracy"]) for r in ok]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, (ref, title) in enumerate((("global_threshold", "minus one global threshold"),
                                      ("tuned", "minus the cascade tuned on test"))):
        for name, mark in (("router", "o"), ("cascade_only", "x")):
            ax[k].scatter(spread, [r["apgr"][name] - r["apgr"][ref] for r in ok], s=10,
                          marker=mark, label=name, alpha=0.7)
        ax[k].axhline(0, color="k", lw=0.8)
        ax[k].set(xlabel="accuracy spread of the single models", ylabel="APGR difference",
                  title=title, ylim=(-1, 1))
        ax[k].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--panels", type=int, default=20)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="first panel's seed (panels seed..seed+N-1)")
    ap.add_argument("--jobs", type=int, default=2)
    # ablation knobs of training/select_policy.py (the defaults are what `confroute train` fits)
    ap.add_argument("--switch-se", type=float, default=SWITCH_SE)
    ap.add_argument("--lambda0-se", type=float, default=LAMBDA0_SE)
    ap.add_argument("--bags", type=int, default=BAGS)
    ap.add_argument("--out", type=Path, default=Path("var/zoo"))
    args = ap.parse_args()
    if args.panels < 1 or args.train < 20 or args.jobs < 1:
        ap.error("--panels >= 1, --train >= 20 and --jobs >= 1")
    t0 = time.perf_counter()
    seeds = range(args.seed, args.seed + args.panels)
    knobs = {"switch_se": args.switch_se, "lambda0_se": args.lambda0_se, "bags": args.bags}
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one_panel, seeds, [args.train] * args.panels,
                             [knobs] * args.panels))
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"command": f"python bench/panel_zoo.py --panels {args.panels} --train {args.train} "
                      f"--seed {args.seed} --switch-se {args.switch_se:g} --lambda0-se "
                      f"{args.lambda0_se:g} --bags {args.bags}",
           "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n_train": args.train,
           "n_test": N_TEST, "seconds": round(time.perf_counter() - t0, 1),
           "summary": summarise(rows), "panels": rows}
    (args.out / "zoo.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    figure(rows, args.out / "zoo.png")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
