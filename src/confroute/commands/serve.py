"""`confroute serve`: the router service (FastAPI under uvicorn, one or several workers)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from confroute.commands._common import user_errors


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000)."),
    models_dir: Path | None = typer.Option(
        None, help="Model versions; serves DIR/current, reloaded on change (default models)."),
    panel: Path | None = typer.Option(
        None, help="Panel config: the backends of /v1/chat/completions "
                   "(default configs/panel.cpu.yaml, embedded llama.cpp)."),
    decision_log: str | None = typer.Option(
        None, help="SQLite file or postgresql:// URL (default var/decisions.db)."),
    log_level: str | None = typer.Option(None, help="debug, info, warning, error or critical."),
    router_config: Path | None = typer.Option(
        None, help="The confidence looper's `algorithm: {type: confidence, ...}` YAML "
                   "(docs/service.md: migrating from the confidence looper)."),
    workers: int | None = typer.Option(
        None, help="Processes serving the port (default 1); they share the decision log and "
                   "models_dir, each hot-reloads, /metrics sums them."),
    version: str | None = typer.Option(
        None, help="A registered version: models:/NAME@ALIAS or models:/NAME/N (MLflow "
                   "registry, MLFLOW_TRACKING_URI), fetched into models_dir, verified, served."),
    follow_alias: bool | None = typer.Option(
        None, "--follow-alias/--no-follow-alias",
        help="Poll --version's alias and serve what a promotion moves it to."),
    follow_interval_s: float | None = typer.Option(None, help="Seconds between alias polls (10)."),
) -> None:
    """Serve /v1/route, /v1/chat/completions, /v1/feedback, /healthz and /metrics.

    Every option can also be set as CONFROUTE_<NAME> in the environment or .env, and so can
    API keys (CONFROUTE_API_KEYS). Without a model version the service starts, not ready.
    """
    import uvicorn

    from confroute.panel import load_panel
    from confroute.service import create_app
    from confroute.settings import Settings

    given: dict[str, Any] = {"host": host, "port": port, "models_dir": models_dir, "panel": panel,
             "decision_log": decision_log, "log_level": log_level,
             "router_config": router_config, "workers": workers, "version": version,
             "follow_alias": follow_alias, "follow_interval_s": follow_interval_s}
    from confroute.backends.llamacpp import LlamaCppBackend
    from confroute.modelstore import ModelStoreError

    with user_errors(ModelStoreError):
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
        panel_config = load_panel(settings.panel)  # a bad panel: one clear line before starting
        _check_grader(settings)  # a grader the served version was not trained with: likewise
        _check_sqlite_log(settings.decision_log)  # a log that can never open: likewise
        if settings.shadow_model is not None and settings.shadow_model not in panel_config.names:
            raise ValueError(f"shadow_model {settings.shadow_model!r} is not in panel "
                             f"{panel_config.name!r}: {panel_config.names}")
        from confroute import registry, tracing

        tracing.configure()  # OTEL_* asking for an exporter that is not installed: likewise
        if settings.version is not None:  # a registry or alias that is not there: likewise
            from confroute.manifest import ManifestError

            try:
                number = registry.resolve(registry.parse(settings.version))
            except ManifestError as exc:
                raise ValueError(str(exc)) from None
            typer.echo(f"serving {settings.version} (registered version {number})", err=True)
        if settings.router_config is not None:  # a bad router config: likewise
            from confroute.looper import load_router_config

            load_router_config(settings.router_config)
        for m in panel_config.models:  # an embedded model that cannot be found, likewise
            if m.backend == "llamacpp":
                LlamaCppBackend.model_file(m.name, m.spec())
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s:     %(name)s: %(message)s")
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                    log_level=settings.log_level, timeout_graceful_shutdown=30)
        return
    _share_settings(settings)
    own = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own:  # a fresh folder: files of an earlier run would be summed in
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="confroute-metrics-")
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        # each worker process builds its app from the environment written above
        uvicorn.run("confroute.service.app:create_app", factory=True, host=settings.host,
                    port=settings.port, workers=settings.workers, log_level=settings.log_level,
                    timeout_graceful_shutdown=30)
    finally:
        if own:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _share_settings(settings: Any) -> None:
    """Write the resolved settings into CONFROUTE_* variables, so that every worker process
    (which builds its app from the environment) serves exactly what was checked here."""
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        os.environ[f"CONFROUTE_{name.upper()}"] = text


def _check_sqlite_log(url: str) -> None:
    """Refuse a SQLite decision log path that no store could ever open (a directory, a file that
    is not SQLite, a parent that is a file): it would start ready and spill every record. A
    PostgreSQL server that is down is an outage, not a misconfiguration: the service starts and
    spills until it is back."""
    from confroute.decisions.location import sqlite_path

    path = sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"decision log {path} is a directory: give a SQLite file path")
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"decision log {path} exists and is not a SQLite database")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"decision log {path}: {parent} is a file, not a directory")


def _check_grader(settings: Any) -> None:
    """Refuse a CONFROUTE_GRADER that is unknown or names another grader than the version in
    models_dir/current was trained with (its signals would not be what its classifiers learned)."""
    if settings.grader is None:
        return
    from confroute.grading import get_grader
    from confroute.manifest import CURRENT, Manifest
    from confroute.versions import check_grader

    get_grader(settings.grader)
    current = settings.models_dir / CURRENT
    if (current / "manifest.json").is_file():
        check_grader(settings.grader, Manifest.load(current))
