"""`confroute train` (fit, calibrate, export, log to MLflow), `confroute versions verify|list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from confroute.commands import models_app, versions_app
from confroute.commands._common import console, user_errors
from confroute.grading import DEFAULT_GRADER


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    config: Path = typer.Option(Path("configs/train.yaml"), help="Training config (YAML)."),
    sweep: bool = typer.Option(False, help="One run per classifier x calibration in the config."),
    out: Path | None = typer.Option(None, "--out", "--models-dir", help="Where versions go."),
    traces: list[Path] | None = typer.Option(None, help="Trace files/directories (repeatable)."),
    table: Path | None = typer.Option(None, help="Ready feature table (CSV/Parquet) instead."),
) -> None:
    """Fit per-model calibrated classifiers, export an ONNX version, log an MLflow run each."""
    from confroute.manifest import ManifestError
    from training import train as pipeline
    from training.config import load_config
    from training.export import ExportError

    with user_errors(pipeline.TrainError, ExportError, ManifestError):
        cfg = load_config(config)
        if traces and table:
            raise ValueError("give --traces or --table, not both")
        update: dict[str, Any] = {}
        if out is not None:
            update["models_dir"] = out
        if traces:
            update.update(traces=traces, table=None)
        if table is not None:
            update["table"] = table
        cfg = cfg.model_copy(update=update)
        results = pipeline.sweep(cfg) if sweep else [pipeline.train(cfg)]
    Console().print(_metrics_table(results) if not sweep else _sweep_table(results))
    for r in results:
        typer.echo(f"{r.classifier}-{r.calibration}\trun {r.run_id}\t{r.version_dir}")
    current = cfg.models_dir / "current"
    if not sweep and cfg.switch_current and current.resolve() != results[0].version_dir.resolve():
        typer.echo(f"{current} was left alone: this version's signal columns are not the "
                   f"service's (a custom feature table), so it cannot be served")
    if sweep:
        from training.tracking import resolve_uri

        typer.echo(f"models/current was left alone; compare the runs with "
                   f"`mlflow ui --backend-store-uri {resolve_uri(cfg.tracking.uri)}`")


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""


def _metrics_table(results: list[Any]) -> Table:
    """Held-out metrics per model with 95% bootstrap intervals, the best raw signal, the verdict."""
    r = results[0]
    table = Table("model", "metric", "value", "95% interval",
                  title=f"{r.classifier} + {r.calibration}: held-out items (ECE: 10 equal-mass bins)")
    for model, m in r.metrics.items():
        table.add_row(model, "answers (correct)", f"{m['n']} ({m['n_correct']})", "")
        for key in ("auroc", "ece", "brier", "log_loss", "accuracy"):
            table.add_row("", key, f"{m[key]:.3f}", _ci(m, key))
        table.add_row("", "ECE if perfectly calibrated", f"{m['ece_if_calibrated']:.3f}",
                      f"95th pct {m['ece_if_calibrated_q95']:.3f}")
        table.add_row("", f"AUROC of {m['best_signal']} alone", f"{m['best_signal_auroc']:.3f}",
                      _ci(m, "best_signal_auroc"))
        table.add_row("", "target (ECE<=0.05, AUROC>=signal)", m["target"], "", end_section=True)
    return table


def _sweep_table(results: list[Any]) -> Table:
    """One row per run and model: held-out AUROC, ECE, Brier, log loss; one section per run."""
    table = Table("classifier", "calibration", "model", "AUROC", "ECE", "Brier", "log loss", "run",
                  title="sweep: held-out items (lower ECE / Brier / log loss is better)")
    for r in results:
        for i, (model, m) in enumerate(r.metrics.items()):
            last = i == len(r.metrics) - 1
            table.add_row(r.classifier, r.calibration, model, *(f"{m[k]:.3f}" for k in
                          ("auroc", "ece", "brier", "log_loss")), r.run_id[:8], end_section=last)
    return table


@versions_app.command("verify")
@models_app.command("verify", hidden=True)  # its name before router versions had their own group
def verify(
    version: str | None = typer.Argument(None, help="Version id or directory (default: current)."),
    models_dir: Path = typer.Option(Path("models"), help="Directory holding the versions."),
    table_features: bool = typer.Option(
        False, help="Accept the manifest's own feature list (a version fitted on a custom table)."),
) -> None:
    """Check a version: every file's sha256, the feature order, one ONNX file per panel model
    that onnxruntime loads with the manifest's input and output (as the service opens it)."""
    from confroute.features import FEATURE_NAMES
    from confroute.manifest import ManifestError, resolve_version
    from confroute.scoring import Scorer

    with user_errors(ManifestError):
        path = resolve_version(models_dir, version)
        m = Scorer.load(path, None if table_features else FEATURE_NAMES).manifest
    typer.echo(f"ok {m.version} ({path}): {len(m.files)} files verified, "
               f"{len(m.feature_names)} features, models {', '.join(m.panel.names)}")


@versions_app.command("list")
def list_versions(
    models_dir: Path = typer.Option(Path("models"), help="Directory holding the versions."),
) -> None:
    """The versions in a models directory, newest first, the served one (`current`) marked
    (`versions verify VERSION` checks one and names its panel)."""
    from confroute.manifest import MANIFEST, ManifestError, resolve_current
    from confroute.policies import kind_of

    try:
        current = resolve_current(models_dir).name
    except ManifestError:
        current = None
    table = Table("", "version", "created", "policy", "grader")
    dirs = sorted((d for d in models_dir.iterdir() if (d / MANIFEST).is_file()
                   and not d.is_symlink()), reverse=True) if models_dir.is_dir() else []
    for d in dirs:
        try:
            raw = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
            policy = kind_of(raw["policy"]) if raw.get("policy") else "-"
            row = (raw["version"], str(raw.get("created", "-"))[:16], policy,
                   raw.get("feature_config", {}).get("grader", DEFAULT_GRADER))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            row = (d.name, f"unreadable manifest: {exc}", "", "")
        table.add_row("*" if d.name == current else "", *row)
    if not dirs:
        typer.echo(f"no versions in {models_dir}: train one (confroute train)", err=True)
        raise typer.Exit(2)
    console.print(table)
