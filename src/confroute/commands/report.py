"""`confroute report traces`: accuracy, tokens and time per model and dataset; histograms; card."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from confroute.commands import report_app
from confroute.commands._common import console, user_errors

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
        out = Console()
        (out if out.is_terminal else Console(width=150)).print(_table(summary))
        _print_notes(summary)
        if not no_figures:
            written = report.write_figures(stats, figures)
            console.print(f"{len(written)} figures in {figures}")
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
        console.print(f"[yellow]coverage:[/yellow] {len(summary.missing)} (model, item) pairs "
                      f"missing, e.g. {examples}")
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
    console.print(f"wrote {path}")
