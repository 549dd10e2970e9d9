"""`confroute evaluate`: replay a version's cascade on held-out traces, beside every baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from confroute.commands._common import user_errors


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    version: Path = typer.Option(Path("models/current"), help="Model version directory."),
    traces: list[Path] = typer.Option([], help="Trace files or directories (repeatable)."),
    table: Path | None = typer.Option(
        None, help="A ready feature table (CSV/Parquet, the columns `train --table` takes) "
                   "instead of traces: any labeled data can judge a version's policy."),
    out: Path = typer.Option(..., help="Directory for report.json and the figures."),
    items_from: Path | None = typer.Option(
        None, help="JSON list of item ids to evaluate on (default: every item the version was "
                   "not fitted on, by its training_items.json; older versions: their "
                   "heldout_items.json, else every item)."),
    exclude_items_from: Path | None = typer.Option(
        None, help="JSON list of item ids to leave out (e.g. the version's fitting items)."),
    mlflow: bool = typer.Option(True, help="Log the report to the version's MLflow run."),
    baseline_column: str | None = typer.Option(
        None, help="A confidence column of the table (or traces' signals, e.g. avg_logprob) for "
                   "the one-threshold baseline: one threshold for every model, swept."),
    learning_curve: bool = typer.Option(
        False, help="Also refit the whole pipeline on 50, 100, 200 and all training items over "
                    "repeated item-grouped splits (--config's settings and panel, on the "
                    "--traces or --table given)."),
    leave_one_set_out: bool = typer.Option(
        False, help="Also refit on every dataset but one and evaluate on the one left out."),
    config: Path = typer.Option(Path("configs/train.yaml"),
                                help="Training config for the refits."),
    repeats: int = typer.Option(5, min=2, help="Repeated splits of the learning curve."),
) -> None:
    """Accuracy and cost per λ, baselines, APGR and the cost/accuracy figure."""
    from confroute.manifest import ManifestError
    from training.evaluate import run_evaluation
    from training.train import TrainError

    with user_errors(ManifestError, KeyError, TrainError):
        if bool(traces) == (table is not None):
            raise ValueError("give --traces or --table (one of them)")
        cfg = None
        if learning_curve or leave_one_set_out:  # a bad --config said so only after the report
            from training.config import load_config

            cfg = load_config(config).model_copy(
                update={"traces": list(traces), "table": table} if table is None
                else {"traces": [], "table": table})
        report = run_evaluation(version, traces, out, items_from, exclude_items_from, mlflow,
                                table, baseline_column)
    Console(markup=False).print(_summary(report))
    if report.get("per_dataset"):
        Console(markup=False).print(_per_dataset(report["per_dataset"]))
    if cfg is not None:
        from training.generalisation import run_generalisation

        with user_errors(TrainError):
            gen = run_generalisation(cfg, out, learning_curve, leave_one_set_out, repeats)
        for key, title in (("learning_curve", "learning curve"),
                           ("leave_one_set_out", "leave one set out")):
            if key in gen:
                Console(markup=False).print(_generalisation(gen[key]["summary"], title))
        typer.echo(f"generalisation: {out / 'generalisation.json'}; figures: "
                   f"{', '.join(gen['figures'])}")
    for line in _targets(report["targets"]):
        typer.echo(line)
    typer.echo(f"{report['n_items']} items ({report['items_source']})")
    typer.echo(f"report: {out / 'report.json'}; figures: {', '.join(report['figures'])}")
    typer.echo(f"MLflow: {report['mlflow']}")


def _summary(report: dict[str, Any]) -> Table:
    """APGR, cost to 50%/80% of the gap, and the accuracy range of every method."""
    table = Table("method", "APGR", "cost 50%", "cost 80%", "accuracy", "cost",
                  title=f"{report['version']}: weak {report['apgr']['weak']}, "
                        f"strong {report['apgr']['strong']}")
    curves = {"router": report["curve"],
              **{k: v["points"] for k, v in report["baselines"].items()}}
    for name, row in report["apgr"]["methods"].items():
        acc = [q["accuracy"] for q in curves[name]]
        cost = [q["cost"] for q in curves[name]]
        table.add_row(name, _f(row["apgr"]), _f(row["cost_50"]), _f(row["cost_80"]),
                      f"{min(acc):.3f}-{max(acc):.3f}", f"{min(cost):.3f}-{max(cost):.3f}")
    return table


def _per_dataset(per: dict[str, Any]) -> Table:
    """APGR of the router and the main baselines on each dataset's held-out items."""
    names = ("router", "single_models", "route_thresholds", "raw_avg_logprob_threshold",
             "fixed_formula")
    table = Table("dataset", "items", *names, title="per dataset (held-out items)")
    for d, row in per.items():
        apgr = row.get("apgr", {})
        table.add_row(d, str(row["n_items"]), *(_f(apgr.get(n)) for n in names))
    return table


def _generalisation(summary: list[dict[str, Any]], title: str) -> Table:
    """Mean APGR (95% t-interval over runs) and the router's gain over the hull and the
    simplest baseline."""
    key = "size" if summary and "size" in summary[0] else "left_out"
    table = Table(key, "train items", "test items", "router", "hull", "route+thresholds",
                  "gain vs hull [95% CI]", "gain vs one threshold", title=title)
    for r in summary:
        table.add_row(str(r[key]), str(r["n_train"]), str(r["n_test"]), _mean(r, "router"),
                      _mean(r, "single_models"), _mean(r, "route_thresholds"),
                      _gain(r, "single_models"), _gain(r, "raw_avg_logprob_threshold"))
    return table


def _mean(row: dict[str, Any], name: str) -> str:
    s = row.get(name)
    return "-" if s is None else _f(s["mean"])


def _gain(row: dict[str, Any], name: str) -> str:
    g = row.get(f"gain_vs_{name}")
    if g is None:
        return "-"
    ci = g.get("ci95")
    return _f(g["mean"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _targets(t: dict[str, Any]) -> list[str]:
    """The issue's targets, one line each, with their numbers."""
    gaps = ", ".join(f"{k} {_f(v['worst_gap'])}" for k, v in t["router_vs_baselines"].items())
    g, m = t["apgr_beats_fixed_formula"], t["match_best_single"]
    fixed = "APGR gain over the fixed formula: - (the table has no avg_logprob/margin)"
    if g is not None:
        ci = g["ci95"]
        fixed = (f"APGR gain over the fixed formula: {_f(g['gain'])} "
                 f"(95% CI {_f(ci[0])} to {_f(ci[1])})")
    return [
        f"router minus baseline accuracy at matched cost (worst point): {gaps}",
        fixed,
        f"within 1 point of {m['best_single']} ({m['best_accuracy']:.3f}) at "
        f"{_f(m['router_cost_share'])} of its cost (target <= 0.70; oracle "
        f"{_f(m['oracle_cost_share'])})",
    ]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
