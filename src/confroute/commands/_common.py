"""Shared helpers for commands: domain errors become one clear line and exit code 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn expected errors (bad config, missing file, bad input) into a message, not a traceback."""
    from confroute.panel import ConfigError
    from confroute.traces import TraceFormatError

    # OSError: a directory where a file belongs (or the reverse), no permission, a file that is
    # not gzip; EOFError: a truncated .gz
    expected: tuple[type[BaseException], ...] = (
        ConfigError, TraceFormatError, OSError, EOFError, ValueError, *kinds
    )
    try:
        yield
    except expected as exc:
        console.print(f"[red]error:[/red] {escape(_message(exc))}")  # a path may hold "[/x]"
        raise typer.Exit(2) from None


def _message(exc: BaseException) -> str:
    """One line; a settings error as `field: what`, not pydantic's dump with a docs URL."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or exc.title}: "
                         f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
    return str(exc)


def require_dir(path: Path, option: str, hint: str = "") -> None:
    """Exit 2 with one line unless `path` is a directory (a typo must not start from nothing)."""
    if not path.is_dir():
        console.print(f"[red]error:[/red] {escape(f'{option} {path} is not a directory{hint}')}")
        raise typer.Exit(2)
