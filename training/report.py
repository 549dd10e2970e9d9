"""Trace reports: accuracy, tokens and time per model and dataset; coverage; the seed experiment's
four confidence histograms per model; the reference-trace card (data/reference-traces/README.md).

The four histograms use the shared signals (confroute.features), never a local re-computation.
"Group confidence" is the trace's *lowest* sliding-window group (`lowest_group`, DeepConf's
"lowest group confidence"): the per-trace mean of the groups is within a window's edge effect of
the average trace confidence, so it would only repeat the first figure.

Traces are streamed and reduced to `TraceStats` (tokens dropped) so whole sets fit easily in memory.
A (model, item) pair seen twice keeps the last trace, as training.pack_traces does.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from confroute.features import FEATURE_NAMES, extract_signals
from confroute.modelstore import REFERENCE_MODELS
from confroute.panel import Panel
from confroute.traces import Generator, Trace, iter_traces
from confroute.traces import trace_files as traces_in

HIST_SIGNALS: tuple[tuple[str, str], ...] = (
    ("avg_confidence", "Average trace confidence"),
    ("lowest_group", "Group confidence (lowest group)"),
    ("bottom10_group", "Bottom-10% group confidence"),
    ("tail_confidence", "Tail confidence"),
)
_COLUMNS = [FEATURE_NAMES.index(name) for name, _ in HIST_SIGNALS]
TOTAL = "all"  # the dataset name of a model's total row


@dataclass(frozen=True)
class TraceStats:
    """What the report keeps of one trace."""

    model: str
    item_id: str
    dataset: str  # `name:split` (dataset_label)
    correct: bool  # an ungraded trace (correct None) counts as not correct
    completion_tokens: int
    truncated: bool
    latency_s: float
    generator: Generator | None
    signals: tuple[float, ...]  # HIST_SIGNALS order; NaN where undefined


@dataclass(frozen=True)
class Row:
    """Counts for one model on one dataset (dataset TOTAL: all of the model's traces)."""

    model: str
    dataset: str
    items: int
    correct: int
    completion_tokens: int
    truncated: int
    latency_s: float  # summed per-request latency; batched requests overlap, so > wall time

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else float("nan")

    @property
    def mean_tokens(self) -> float:
        return self.completion_tokens / self.items if self.items else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.latency_s if self.latency_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        derived = {"accuracy": self.accuracy, "mean_tokens": self.mean_tokens,
                   "tokens_per_s": self.tokens_per_s}
        clean = {k: round(v, 4) if np.isfinite(v) else None for k, v in derived.items()}
        return {**asdict(self), **clean}  # None, not NaN: the JSON stays strict


@dataclass(frozen=True)
class Summary:
    """The report: rows per model (datasets, then TOTAL), generators, coverage gaps, duplicates."""

    rows: list[Row]
    generators: dict[str, list[Generator]]
    missing: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "generators": {m: msgspec.to_builtins(g) for m, g in self.generators.items()},
            "missing": [list(p) for p in self.missing],
            "duplicates": self.duplicates,
        }


def trace_files(path: str | Path) -> list[Path]:
    """The trace files of a path: the file itself, or every trace file in a directory."""
    p = Path(path)
    if p.is_dir():
        files = traces_in(p)
        if not files:
            raise ValueError(f"{p}: no *.jsonl, *.jsonl.gz or *.traces.npz trace files in this directory")
        return files
    if not p.is_file():
        raise ValueError(f"{p}: no such trace file or directory")
    return [p]


def trace_stats(trace: Trace) -> TraceStats:
    """Reduce one trace to its counts and the four histogram signals."""
    x = extract_signals(trace)
    return TraceStats(trace.model, trace.item_id, dataset_label(trace), bool(trace.correct),
                      trace.usage.completion_tokens, trace.finish_reason == "length",
                      trace.latency_s, trace.generator, tuple(float(x[i]) for i in _COLUMNS))


def dataset_label(trace: Trace) -> str:
    """`name:split` when the item id is the loader's `name/split/row` (GSM8K has both splits), else
    the trace's dataset name as it is."""
    parts = trace.item_id.split("/")
    if len(parts) == 3 and parts[0] == trace.dataset and all(parts):
        return f"{parts[0]}:{parts[1]}"
    return trace.dataset


def load_stats(paths: Iterable[str | Path]) -> tuple[list[TraceStats], int]:
    """Stats of every trace under the paths, last per (model, item) kept; and duplicates dropped."""
    files = [f for p in paths for f in trace_files(p)]
    kept: dict[tuple[str, str], TraceStats] = {}
    seen = 0
    for f in files:
        for t in iter_traces(f):
            kept[(t.model, t.item_id)] = trace_stats(t)
            seen += 1
    if not kept:
        raise ValueError(f"no traces in {', '.join(map(str, files))}")
    return list(kept.values()), seen - len(kept)


def coverage(
    traces: Iterable[Trace | TraceStats], models: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """(model, item_id) pairs missing: items some model answered that another has not."""
    answered: dict[str, set[str]] = defaultdict(set)
    for t in traces:
        answered[t.model].add(t.item_id)
    names = list(models) if models is not None else list(answered)
    items = set().union(*(answered[m] for m in names)) if names else set()
    return sorted((m, i) for m in names for i in items - answered[m])


def order_models(names: Iterable[str], panel_order: Sequence[str] = ()) -> list[str]:
    """Panel order first (cheapest first), then the reference panel's, then the rest by name."""
    known = [*panel_order, *(m for m in REFERENCE_MODELS if m not in panel_order)]
    rank = {m: i for i, m in enumerate(known)}
    return sorted(set(names), key=lambda m: (rank.get(m, len(rank)), m))


def summarize(
    stats: Sequence[TraceStats], panel_order: Sequence[str] = (), duplicates: int = 0
) -> Summary:
    """Rows per (model, dataset) plus one TOTAL row per model; coverage over the models seen."""
    groups: dict[tuple[str, str], list[TraceStats]] = defaultdict(list)
    for s in stats:
        groups[(s.model, s.dataset)].append(s)
        groups[(s.model, TOTAL)].append(s)
    models = order_models({s.model for s in stats}, panel_order)
    rows = [
        _row(m, d, groups[(m, d)])
        for m in models
        for d in [*sorted(d for mm, d in groups if mm == m and d != TOTAL), TOTAL]
    ]
    generators = {m: _distinct(s.generator for s in groups[(m, TOTAL)]) for m in models}
    return Summary(rows, generators, coverage(stats, models), duplicates)


def _row(model: str, dataset: str, group: Sequence[TraceStats]) -> Row:
    return Row(model, dataset, len(group), sum(s.correct for s in group),
               sum(s.completion_tokens for s in group), sum(s.truncated for s in group),
               round(sum(s.latency_s for s in group), 3))


def _distinct(gens: Iterable[Generator | None]) -> list[Generator]:
    return list(dict.fromkeys(g for g in gens if g is not None))


def write_figures(stats: Sequence[TraceStats], out_dir: str | Path) -> list[Path]:
    """The four histograms (correct vs incorrect) per model as PNG; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model in order_models({s.model for s in stats}):
        rows = [s for s in stats if s.model == model]
        values = np.array([s.signals for s in rows], dtype=float)
        correct = np.array([s.correct for s in rows], dtype=bool)
        datasets = ", ".join(sorted({s.dataset for s in rows}))
        for j, (name, title) in enumerate(HIST_SIGNALS):
            path = out / f"{_safe(model)}-{name}.png"
            _histogram(values[:, j], correct, f"{model}: {title}", datasets, name, path)
            written.append(path)
    return written


def _histogram(x: np.ndarray, correct: np.ndarray, title: str, datasets: str, xlabel: str,
               path: Path) -> None:
    """One overlaid, density-normalised histogram on shared bins; NaN values are left out."""
    import matplotlib.pyplot as plt

    ok = np.isfinite(x)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n_bins = int(np.clip(2 * np.sqrt(ok.sum()), 10, 40))  # fewer, wider bins for small n
    edges = np.histogram_bin_edges(x[ok], n_bins) if ok.any() else np.linspace(0, 1, 11)
    bins = edges.tolist()  # the same bins for both classes, so the bars compare
    for mask, label, color in ((correct, "correct", "tab:green"), (~correct, "wrong", "tab:red")):
        v = x[ok & mask]
        if v.size:
            text = f"{label}, n={v.size}"
            ax.hist(v, bins=bins, density=True, alpha=0.5, color=color, label=text)
    if not ok.any():
        ax.text(0.5, 0.5, "no trace has this signal", ha="center", transform=ax.transAxes)
    dropped = f", {int((~ok).sum())} without it" if (~ok).any() else ""
    ax.set_title(f"{title}\nn={x.size}{dropped}; {datasets}", fontsize=10)
    ax.set_xlabel(f"{xlabel} (higher = more confident)")
    ax.set_ylabel("density")
    if ok.any():
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


@dataclass(frozen=True)
class CardMeta:
    """What the card needs beyond the traces: the panel (prompt, decoding), date, wall times."""

    panel: Panel
    date: str
    wall_s: Mapping[str, float] = field(default_factory=dict)  # model -> generation wall time


def card_markdown(summary: Summary, meta: CardMeta) -> str:
    """The reference-trace card (README beside the shipped files) as Markdown."""
    parts = [
        "# Reference traces\n",
        f"Real generations of the reference panel with top-k logprobs, graded. Date: {meta.date}.",
        "`confroute report traces data/reference-traces` reproduces every number below but the",
        "wall times, which come from the generation log.\n",
        "## Models\n", _models_md(summary),
        "## Prompt\n", _prompt_md(meta.panel),
        "## Decoding and backend\n", _decoding_md(summary, meta.panel),
        "## Tokens and time per model\n", _totals_md(summary, meta.wall_s),
        "## Accuracy per dataset\n", _accuracy_md(summary),
        "## Coverage\n", _coverage_md(summary),
    ]
    return "\n".join(parts)


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _models_md(summary: Summary) -> str:
    rows = []
    for m in summary.models:
        src = REFERENCE_MODELS.get(m)
        row = [src.description, f"{src.size:,}", f"`{src.sha256}`"] if src else ["-", "-", "-"]
        rows.append([m, *row])
    return md_table(["model", "file", "bytes", "sha256 (GGUF)"], rows)


def _prompt_md(panel: Panel) -> str:
    system = panel.prompt.system
    head = f"System message:\n\n```text\n{system}\n```\n\n" if system else ""
    user = f"```text\n{panel.prompt.template}\n```\n"
    return f"{head}User message (`{{question}}` is the item's question):\n\n{user}"


def _decoding_md(summary: Summary, panel: Panel) -> str:
    rows = []
    for m in summary.models:
        batch = getattr(panel.get(m), "n_parallel", "-") if m in panel.names else "-"
        for g in summary.generators[m]:
            rows.append([m, g.backend, g.version or "-", g.temperature, g.top_logprobs,
                         g.max_tokens, batch])
    head = ["model", "backend", "version", "temperature", "top_logprobs", "max_tokens",
            "sequences decoded together"]
    intro = "From each trace's `generator` field (temperature 0 is greedy decoding):\n\n"
    return intro + md_table(head, rows)


def _totals_md(summary: Summary, wall_s: Mapping[str, float]) -> str:
    head = ["model", "items", "completion tokens", "mean tokens", "truncated", "summed latency s",
            "tokens/s per request", "wall time s", "tokens/s over wall time"]
    rows = [[r.model, r.items, f"{r.completion_tokens:,}", f"{r.mean_tokens:.0f}", r.truncated,
             f"{r.latency_s:,.0f}", f"{r.tokens_per_s:.1f}", *_wall(r, wall_s.get(r.model))]
            for r in summary.rows if r.dataset == TOTAL]
    note = ("\nSummed latency adds each request's own time; requests decoded together overlap, "
            "so it exceeds the wall time.\n")
    return md_table(head, rows) + note


def _wall(row: Row, seconds: float | None) -> list[str]:
    if not seconds:
        return ["-", "-"]
    return [f"{seconds:,.0f}", f"{row.completion_tokens / seconds:.1f}"]


def _accuracy_md(summary: Summary) -> str:
    datasets = [*sorted({r.dataset for r in summary.rows if r.dataset != TOTAL}), TOTAL]
    cell = {(r.model, r.dataset): f"{r.accuracy:.3f} ({r.correct}/{r.items})" for r in summary.rows}
    rows = [[m, *(cell.get((m, d), "-") for d in datasets)] for m in summary.models]
    return md_table(["model", *datasets], rows)


def _coverage_md(summary: Summary) -> str:
    n_items = max((r.items for r in summary.rows if r.dataset == TOTAL), default=0)
    if not summary.missing:
        return f"Every model answers the same {n_items} items.\n"
    n = len(summary.missing)
    return f"{n} (model, item) pairs are missing; `confroute report traces` lists them.\n"
