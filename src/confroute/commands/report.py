"""`confroute report traces`: accuracy, tokens and time per model and dataset; histograms; card."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from confroute.commands import report_app
from confroute.commands._common import console, user_errors
from confroute.grading import DEFAULT_GRADER

if TYPE_CHECKING:
    from training.report import Summary


PANEL = Path("configs/panel.cpu.yaml")


def register(app: typer.Typer) -> None:
    """Commands live on report_app; nothing to add at the top level."""


@report_app.command("traces")
def traces(
    paths: list[Path] = typer.Argument(
        ..., help="Trace files (.jsonl, .jsonl.gz, .traces.npz) or directories."),
    figures: Path = typer.Option(Path("var/reports/traces"), help="Where the histogram PNGs go."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Print the table only."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the table as JSON."),
    card: Path | None = typer.Option(None, help="Also write the reference-trace card (Markdown)."),
    panel: Path = typer.Option(PANEL, help="Panel: model order, and the card's prompt."),
    wall_time: list[str] = typer.Option([], help="MODEL=SECONDS generation wall time (card)."),
) -> None:
    """Per-model, per-dataset accuracy, tokens and time; four confidence histograms per model."""
    from confroute.panel import load_panel
    from training import report

    with user_errors():
        cfg = load_panel(panel) if card or panel.exists() else None
        stats, duplicates = report.load_stats(paths)
        summary = report.summarize(stats, cfg.names if cfg else (), duplicates)
        walls = _parse_wall_times(wall_time, summary.models)
        out = Console(markup=False)  # cells hold dataset and model names as given
        (out if out.is_terminal else Console(width=150, markup=False)).print(_table(summary))
        _print_notes(summary)
        if not no_figures:
            written = report.write_figures(stats, figures)
            console.print(escape(f"{len(written)} figures in {figures}"))
        if json_out:
            _write(json_out, json.dumps(summary.to_dict(), indent=1) + "\n")
        if card and cfg:
            date = dt.date.today().isoformat()
            _write(card, report.card_markdown(summary, report.CardMeta(cfg, date, walls)))


def _table(summary: Summary) -> Table:
    """The rich table: one row per model and dataset, the model's total in bold."""
    title = "Traces (latency: summed over requests; tokens/s: per request)"
    table = Table("model", "dataset", "items", "correct", "accuracy", "mean tokens", "truncated",
                  "tokens", "latency s", "tokens/s", title=title)
    for r in summary.rows:
        style = "bold" if r.dataset == "all" else None
        table.add_row(r.model, r.dataset, str(r.items), str(r.correct), f"{r.accuracy:.3f}",
                      f"{r.mean_tokens:.0f}", str(r.truncated), f"{r.completion_tokens:,}",
                      f"{r.latency_s:,.0f}", f"{r.tokens_per_s:.1f}", style=style,
                      end_section=r.dataset == "all")
    return table


def _print_notes(summary: Summary) -> None:
    """Coverage gaps and dropped duplicates, one line each (and a few examples)."""
    if summary.missing:
        examples = ", ".join(f"{m}:{i}" for m, i in summary.missing[:5])
        console.print("[yellow]coverage:[/yellow] " + escape(
            f"{len(summary.missing)} (model, item) pairs missing, e.g. {examples}"))
    if summary.duplicates:
        console.print(f"{summary.duplicates} duplicate (model, item) traces: the last one counts")


def _parse_wall_times(specs: list[str], models: list[str]) -> dict[str, float]:
    """MODEL=SECONDS pairs for models in the report; anything else is a ValueError naming it."""
    walls = {}
    for spec in specs:
        match = re.fullmatch(r"(.+)=(\d+(?:\.\d*)?)", spec)
        if not match or match[1] not in models:
            raise ValueError(f"--wall-time {spec!r}: expected MODEL=SECONDS, MODEL one of {models}")
        walls[match[1]] = float(match[2])
    return walls


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    console.print(escape(f"wrote {path}"))


@report_app.command("traffic")
def traffic(
    log: str = typer.Option(..., help="The service's decision log: SQLite file or postgresql:// URL."),
    panel: Path = typer.Option(PANEL, help="Panel: model order and prices."),
    since: str | None = typer.Option(None, help="Only decisions since: 24h, 7d, an ISO time."),
    out: Path | None = typer.Option(None, help="Write traffic.json and p_correct.png here."),
    grader: str = typer.Option(DEFAULT_GRADER, help="Grades stages logged after their request's "
                               "gold feedback (the served version's grader: numeric, exact, choice)."),
) -> None:
    """Requests, who answered, escalation and skip-ahead rates, cost against always calling the
    last model, accuracy and calibration where feedback exists, shadow mode's would-be figures."""
    from confroute.grading import get_grader
    from confroute.panel import load_panel
    from training.inrows import LogError, parse_since, read_log
    from training.traffic import p_correct_figure, traffic_report

    with user_errors(LogError):
        cfg = load_panel(panel)
        decisions = read_log(log, parse_since(since))
        rep = traffic_report(decisions, cfg, get_grader(grader))
        Console(markup=False).print(_traffic_table(rep))
        for key in ("cost_basis", "always_last_basis"):
            console.print(escape(f"{key.replace('_', ' ')}: {rep[key]}"))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            rep["figures"] = [p_correct_figure(decisions, cfg, out / "p_correct.png").name]
            _write(out / "traffic.json", json.dumps(rep, indent=1) + "\n")


def _traffic_table(rep: dict[str, object]) -> Table:
    table = Table("figure", "value", title=f"traffic: {rep['requests']} requests")

    def f(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    for key in ("escalation_rate", "skip_ahead_rate", "two_or_more_calls", "cost",
                "always_last_cost", "relative_cost", "saved", "labeled_requests", "accuracy"):
        if key in rep:
            table.add_row(key.replace("_", " "), f(rep[key]))
    for m, share in dict(rep.get("answered", {})).items():  # type: ignore[call-overload]
        table.add_row(f"answered by {m}", f(share))
    for m, calls in dict(rep.get("calls_outside_panel", {})).items():  # type: ignore[call-overload]
        table.add_row(f"{m}: not in the panel", f"{calls} calls priced 0 (pass its --panel)")
    for m, c in dict(rep.get("calibration", {})).items():  # type: ignore[call-overload]
        ece = f" ECE {c['ece']:.3f} (calibrated p would show <= {c['ece_if_calibrated_p95']:.3f})" \
            if "ece" in c else ""
        table.add_row(f"labeled {m}", f"{c['rows']} rows, accuracy {c['accuracy']:.3f}, "
                                      f"mean p {c['mean_p']:.3f}{ece}")
    sh = rep.get("shadow")
    if isinstance(sh, dict):
        table.add_row("shadow requests", f(sh["requests"]))
        table.add_row("shadow: would-be / served cost", f(sh["would_be_relative_cost"]))
        table.add_row("shadow: would-be accuracy", f(sh["would_be_accuracy"]))
        for m, share in sh["would_answer"].items():
            table.add_row(f"shadow: would be answered by {m}", f(share))
    return table


@report_app.command("counterfactual")
def counterfactual(
    log: str = typer.Option(..., help="The service's decision log: SQLite file or postgresql:// URL."),
    version: str = typer.Option("current", help="The version whose policy to evaluate (id or dir)."),
    lam: float = typer.Option(..., "--lambda", help="The cost_quality_tradeoff to evaluate it at."),
    models_dir: Path = typer.Option(Path("models"), help="Directory holding the versions."),
    panel: Path = typer.Option(PANEL, help="Panel: model order and prices."),
    since: str | None = typer.Option(None, help="Only decisions since: 24h, 7d, an ISO time."),
    grader: str = typer.Option(DEFAULT_GRADER, help="Grades stages logged after their gold."),
    out: Path | None = typer.Option(None, help="Write counterfactual.json here."),
) -> None:
    """What another version or λ would have scored and cost on the logged chat traffic: IPS,
    self-normalised IPS and doubly robust estimates from the logged propensities, with 95%
    bootstrap intervals, the effective sample size and whether the log's support covers it."""
    from confroute.grading import get_grader
    from confroute.manifest import Manifest, ManifestError, resolve_version
    from confroute.panel import load_panel
    from confroute.policies import load_policy
    from confroute.policy_api import check_lambda
    from training.counterfactual import episodes_from_log, estimate
    from training.inrows import LogError, parse_since, read_log, with_late_labels

    with user_errors(LogError, ManifestError):
        lam = check_lambda(lam)
        m = Manifest.load(resolve_version(models_dir, None if version == "current" else version))
        if m.policy is None:
            raise ValueError(f"version {m.version} has no policy table")
        policy = load_policy(m.policy)
        cfg = load_panel(panel)
        decisions = with_late_labels(read_log(log, parse_since(since)), get_grader(grader))
        eps, skipped = episodes_from_log(decisions, cfg)
        if not eps:
            raise ValueError(f"no chat request in {log} has propensities and labels on every "
                             f"stage (left out: {skipped}); serve with "
                             "CONFROUTE_EXPLORE_ROUTE_RATE > 0 and send gold feedback")
        rep = {"version": m.version, "lambda": lam, **estimate(eps, policy, lam),
               "left_out": skipped}
    table = Table("estimator", "accuracy [95% CI]", "cost [95% CI]",
                  title=f"{m.version} at λ {lam:g} on {rep['episodes']} logged requests")
    for e in ("ips", "snips", "dr"):
        a, c = rep["accuracy"][e], rep["cost"][e]
        table.add_row(e, f"{a['estimate']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]",
                      f"{c['estimate']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]")
    Console(markup=False).print(table)
    console.print(escape(f"matched {rep['matched']} of {rep['episodes']}, effective sample size "
                         f"{rep['ess']:.1f}, coverage {rep['coverage']:.2f}; left out "
                         f"{rep['left_out']}; cost in panel price units"))
    if not rep["covered"]:
        console.print(escape("the log's support does not cover this policy: some of its choices "
                             "were never explored (ε = 0 there) or none of its routes was "
                             "logged; these estimates are not unbiased"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "counterfactual.json", json.dumps(rep, indent=1) + "\n")
