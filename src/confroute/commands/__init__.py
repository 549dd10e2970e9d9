"""CLI commands, one module per area; each defines `register(app)`. Heavy imports stay inside commands."""

import typer

models_app = typer.Typer(help="The reference panel's model files (GGUF).", no_args_is_help=True)
versions_app = typer.Typer(help="Router versions: the exported classifiers and policy that "
                                "`confroute train` writes and `confroute serve` serves.",
                           no_args_is_help=True)
report_app = typer.Typer(help="Reports on traces and on live traffic.", no_args_is_help=True)
