"""The `confroute` command line: one sub-module of confroute.commands per area."""

from __future__ import annotations

import importlib

import typer

from confroute.commands import models_app, report_app, versions_app

app = typer.Typer(
    help="confroute: cheapest model first, escalate only when its calibrated confidence says so.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _area in ("generate", "models", "report", "train", "evaluate", "serve", "retrain"):
    importlib.import_module(f"confroute.commands.{_area}").register(app)
app.add_typer(models_app, name="models")
app.add_typer(versions_app, name="versions")
app.add_typer(report_app, name="report")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
