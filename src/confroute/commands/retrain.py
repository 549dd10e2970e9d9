"""`confroute retrain` (decision log + feedback -> gated, promoted version) and `confroute drift`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from confroute.commands._common import console, require_dir, user_errors

if TYPE_CHECKING:  # the pipeline is imported inside the commands (heavy)
    import pandas as pd

    from training.gate import Check, Comparison, Verdict
    from training.retrain import RetrainResult

EXIT_CODES = "exit 0: promoted (dry run: would be); 1: refused by the gate; 2: bad input; " \
             "3: no or too few labels (nothing fitted or written)"


def register(app: typer.Typer) -> None:
    app.command("retrain", epilog=EXIT_CODES)(retrain)
    app.command("drift")(drift)


def retrain(
    log: str = typer.Option(..., help="Decision log: SQLite path or postgresql:// URL."),
    since: str | None = typer.Option(
        None, help="Only decisions since: ISO time, unix seconds, or 24h / 7d ago."),
    since_version: str | None = typer.Option(
        None, help="Only decisions since this version's first logged decision."),
    config: Path = typer.Option(Path("configs/retrain.yaml"), help="Retrain config (YAML)."),
    mix_reference: bool = typer.Option(
        False, "--mix-reference", help="Also fit on the earlier training data (train.traces)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would happen; write nothing."),
    models_dir: Path = typer.Option(Path("models"), help="Directory holding the versions."),
) -> None:
    """Fit a candidate on logged traffic, compare it with current, promote it if the gate passes."""
    from confroute.manifest import ManifestError
    from training import retrain as rt
    from training.export import ExportError
    from training.inrows import LogError, parse_since
    from training.train import TrainError

    if since and since_version:
        console.print("[red]error:[/red] give --since or --since-version, not both")
        raise typer.Exit(2)
    require_dir(models_dir, "--models-dir", " (create it to start a first version there)")
    with user_errors(LogError, TrainError, ExportError, ManifestError, OSError):
        cfg = rt.load_retrain_config(config)
        opts = rt.Options(log, parse_since(since), since_version, mix_reference, dry_run,
                          models_dir)
        try:
            result = rt.retrain(cfg, opts)
        except rt.NotEnoughLabels as exc:
            Console().print(counts_table(exc.counts))
            console.print(f"[yellow]no candidate:[/yellow] {escape(str(exc))}")
            raise typer.Exit(rt.EXIT_NOT_ENOUGH_LABELS) from None
    report(result, models_dir)
    raise typer.Exit(result.exit_code)


def report(result: RetrainResult, models_dir: Path = Path("models")) -> None:
    """Label counts, the comparison table, notes and the verdict line."""
    out = Console()
    out.print(counts_table(result.counts))
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print(comparison_table(result.comparison, result.verdict))
    c = result.comparison
    out.print(f"utility at λ={c.lam:g}: {c.utility_basis}")
    for line in result.verdict.not_judged:
        out.print(f"not judged: {line}")
    for run, run_id in result.runs.items():
        out.print(f"MLflow run ({run}): {run_id}")
    out.print(verdict_line(result, models_dir))


def verdict_line(r: RetrainResult, models_dir: Path = Path("models")) -> str:
    current, link = r.current or "none", models_dir / "current"
    if r.dry_run:
        what = "would promote" if r.verdict.promote else "would refuse"
        return f"dry run: {what} candidate {r.candidate} (current {current}); nothing written"
    if r.promoted:
        return (f"promoted {r.candidate}: {link} -> {r.candidate} (was {current}); "
                f"a running service picks it up by its hot reload")
    return f"refused {r.candidate}: {'; '.join(r.verdict.reasons)}; {link} stays {current}"


def counts_table(counts: pd.DataFrame) -> Table:
    table = Table("model", "decisions", "labeled", "unlabeled", "correct", "accept", "escalate",
                  "skip", "explore", title="logged answers (labeled per decision kind)")
    for model, c in counts.iterrows():
        table.add_row(str(model), *(str(int(c[k])) for k in (
            "decisions", "labeled", "unlabeled", "labeled_correct", "labeled_accept",
            "labeled_escalate", "labeled_skip", "labeled_explore")))
    return table


def comparison_table(c: Comparison, verdict: Verdict) -> Table:
    """Per model and metric: current, candidate, difference, and the gate's mark."""
    gated = {(k.model, k.metric): k for k in verdict.checks}
    table = Table("model", "metric", "current", "candidate", "Δ", "gate",
                  title=f"held-out in-domain rows, same rows for both: current "
                        f"{c.versions.get('current') or '-'}, candidate {c.versions['candidate']}")
    for model, cand in c.models["candidate"].items():
        cur = c.models.get("current", {}).get(model) or {}
        for i, key in enumerate(("n", "auroc", "ece", "brier", "log_loss")):
            a, b = cur.get(key, math.nan), (cand or {}).get(key, math.nan)
            table.add_row(model if i == 0 else "", key, _f(a), _f(b), _f(b - a),
                          _mark(gated.get((model, key))), end_section=key == "log_loss")
    for key in ("accuracy", "cost", "utility"):
        a = c.utility.get("current", {}).get(key, math.nan)
        b = c.utility.get("candidate", {}).get(key, math.nan)
        table.add_row("cascade" if key == "accuracy" else "", key, _f(a), _f(b), _f(b - a),
                      _mark(gated.get(("all", key))))
    return table


def _mark(check: Check | None) -> str:
    if check is None:
        return ""
    return "[green]ok[/green]" if check.ok else "[red]worse[/red]"


def _f(v: float) -> str:
    if not isinstance(v, int | float) or math.isnan(v):
        return "-"
    return f"{v:.0f}" if float(v).is_integer() and (abs(v) >= 1 or v == 0) else f"{v:.4f}"


def drift(
    log: str = typer.Option(..., help="Decision log: SQLite path or postgresql:// URL."),
    since: str | None = typer.Option(
        None, help="Only decisions since: ISO time, unix seconds, or 24h / 7d ago."),
    reference: Path = typer.Option(
        Path("data/reference-traces"), help="Training data: traces, or a CSV/Parquet table."),
    out: Path = typer.Option(Path("drift.json"), help="Where the JSON report goes."),
    models_dir: Path = typer.Option(Path("models"), help="p_correct from models/current."),
    panel: Path = typer.Option(
        Path("configs/panel.cpu.yaml"), help="Panel, when there is no current version."),
) -> None:
    """Per model: signal and p_correct drift (PSI, KS) since training, calibration on labels."""
    from confroute.manifest import ManifestError
    from confroute.panel import load_panel
    from training.drift import log_drift, to_json
    from training.evaluate import panel_of
    from training.inrows import LogError, parse_since
    from training.retrain import current_scorer

    require_dir(models_dir, "--models-dir")
    with user_errors(LogError, ManifestError, OSError):
        scorer = current_scorer(models_dir)
        if scorer is None:
            console.print("[yellow]note:[/yellow] " + escape(
                f"no current version in {models_dir}: p_correct is not compared, signals only "
                f"({panel})"))
        pnl = panel_of(scorer.manifest) if scorer else load_panel(panel)
        result = log_drift(log, parse_since(since), reference, scorer, pnl)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(result), encoding="utf-8")
    Console().print(drift_table(result))
    typer.echo(f"report: {out}")


def drift_table(report: dict[str, Any]) -> Table:
    """Flagged signals per model (PSI, KS, means) and calibration on the labeled rows."""
    table = Table("model", "signal", "PSI", "KS", "KS p", "reference mean", "recent mean",
                  title=f"drift vs {report['reference']} (flag: KS p < {report['ks_alpha']}, or "
                        f"PSI >= {report['psi_flag']} beyond its noise; >= {report['min_rows']} "
                        f"rows a side)")
    for model, m in report["models"].items():
        rows = [r for r in m["signals"] if r["flagged"]]
        cal = m["calibration"]
        label = f"{model} ({m['n_recent']} recent, {m['n_reference']} ref)"
        if not m.get("judged", True):
            table.add_row(label, f"not judged (< {report['min_rows']} rows a side)", *[""] * 5)
        elif not rows:
            table.add_row(label, "nothing flagged", *[""] * 5)
        for i, r in enumerate(rows):
            table.add_row(label if i == 0 else "", r["signal"], _f(r["psi"]), _f(r["ks"]),
                          f"{r['ks_pvalue']:.1e}", _f(r["reference_mean"]), _f(r["recent_mean"]))
        if cal and cal["n_labeled"]:
            mark = "[red]miscalibrated[/red]" if cal["flagged"] else "calibration"
            table.add_row("", f"{mark} ({cal['n_labeled']} labeled)", f"ECE {cal['ece']:.3f}",
                          f"floor {cal['ece_if_calibrated_q95']:.3f}", "",
                          f"mean p {cal['mean_p']:.3f}", f"accuracy {cal['accuracy']:.3f}")
        table.add_section()
    return table
