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
    traces: list[Path] = typer.Option(..., help="Trace files or directories (repeatable)."),
    out: Path = typer.Option(..., help="Directory for report.json and the figures."),
    items_from: Path | None = typer.Option(
        None, help="JSON list of item ids to evaluate on (default: the version's "
                   "heldout_items.json when it has one, else every item)."),
    exclude_items_from: Path | None = typer.Option(
        None, help="JSON list of item ids to leave out (e.g. the version's fitting items)."),
    mlflow: bool = typer.Option(True, help="Log the report to the version's MLflow run."),
) -> None:
    """Accuracy and cost per λ, baselines, APGR and the cost/accuracy figure."""
    from confroute.manifest import ManifestError
    from training.evaluate import run_evaluation

    with user_errors(ManifestError, KeyError):
        report = run_evaluation(version, traces, out, items_from, exclude_items_from, mlflow)
    Console().print(_summary(report))
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


def _targets(t: dict[str, Any]) -> list[str]:
    """The issue's targets, one line each, with their numbers."""
    gaps = ", ".join(f"{k} {_f(v['worst_gap'])}" for k, v in t["router_vs_baselines"].items())
    g, m = t["apgr_beats_fixed_formula"], t["match_best_single"]
    ci = g["ci95"]
    return [
        f"router minus baseline accuracy at matched cost (worst point): {gaps}",
        f"APGR gain over the fixed formula: {_f(g['gain'])} (95% CI {_f(ci[0])} to {_f(ci[1])})",
        f"within 1 point of {m['best_single']} ({m['best_accuracy']:.3f}) at "
        f"{_f(m['router_cost_share'])} of its cost (target <= 0.70; oracle "
        f"{_f(m['oracle_cost_share'])})",
    ]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
