"""CLI commands, one module per area; each defines `register(app)`. Heavy imports stay inside commands."""

import typer

models_app = typer.Typer(
    help="Reference-panel model files and exported router versions.", no_args_is_help=True
)
report_app = typer.Typer(help="Reports on traces and on live traffic.", no_args_is_help=True)
