"""`confroute generate`: graded traces with top-k logprobs from panel models on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from confroute.commands._common import console, user_errors
from confroute.grading import DEFAULT_GRADER


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    panel: Path = typer.Option(Path("configs/panel.cpu.yaml"), help="Panel config (YAML)."),
    dataset: str = typer.Option(..., help="NAME:SPLIT (gsm8k:test, svamp:test, ...) or a file."),
    out: Path = typer.Option(..., help="Trace JSONL to append to; done items are skipped."),
    models: str | None = typer.Option(None, help="Comma-separated panel models (default: all)."),
    limit: int | None = typer.Option(None, min=1, help="First N items only."),
    skip: int = typer.Option(
        0, min=0, help="Leave out the first N of those items (to split one run across processes)."
    ),
    question: str = typer.Option("question", help="Question column, for a file or hub dataset."),
    answer: str = typer.Option("answer", help="Gold-answer column, for a file or hub dataset."),
    grader: str = typer.Option(DEFAULT_GRADER, help="numeric, exact or choice."),
) -> None:
    """Generate traces (resumable), grading as it goes; print accuracy, tokens and time."""
    from tqdm import tqdm

    from confroute.backends import BackendError
    from confroute.modelstore import ModelStoreError
    from confroute.panel import load_panel
    from training.datasets import DatasetError, load_items
    from training.generate import generate as run

    if TYPE_CHECKING:
        from confroute.traces import Trace

    from confroute.grading import get_grader

    with user_errors(DatasetError, BackendError, ModelStoreError):
        get_grader(grader)  # an unknown grader is refused before any model loads
        cfg = load_panel(panel)
        names = [m.strip() for m in models.split(",")] if models else cfg.names
        unknown = [n for n in names if n not in cfg.names]
        if unknown:
            raise ValueError(f"models {unknown} are not in panel {cfg.name!r}; panel: {cfg.names}")
        items = load_items(dataset, limit=limit, question=question, answer=answer, grader=grader)
        if skip >= len(items):
            raise ValueError(f"--skip {skip} leaves none of the {len(items)} items of {dataset}")
        items = items[skip:]  # item ids keep their row numbers, so split runs' traces join
        bars: dict[str, tqdm] = {}
        stats: dict[str, list[int]] = {}

        def start(model: str, done: int, total: int) -> None:
            bars[model] = tqdm(total=total, initial=done, desc=model, unit="item")
            stats[model] = [0, 0, 0]

        def progress(model: str, trace: Trace, elapsed: float) -> None:
            bar, s = bars[model], stats[model]
            s[2] += 1
            s[0] += trace.usage.completion_tokens
            s[1] += bool(trace.correct)
            bar.update(1)
            bar.set_postfix(tok_s=f"{s[0] / max(elapsed, 1e-9):.1f}", acc=f"{s[1] / s[2]:.2f}")

        summaries = run(cfg, items, out, models=names, on_progress=progress, on_start=start)
        for bar in bars.values():
            bar.close()
    cols = ("model", "dataset", "items", "accuracy", "completion tokens", "truncated", "latency s")
    table = Table(*cols)
    for s in summaries:
        table.add_row(
            s.model, s.dataset, str(s.items), f"{s.accuracy:.3f}", str(s.completion_tokens),
            str(s.truncated), f"{s.latency_s:.0f}",
        )
    console.print(table)
