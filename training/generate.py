"""Generate graded traces for panel models on a dataset: resumable, with progress and a summary."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from confroute.backends import Backend, Completion, GenParams, make_backend
from confroute.grading import get_grader
from confroute.panel import Panel
from confroute.traces import Generator, Message, Trace, append_traces, done_keys, iter_traces
from training.datasets import Item
from training.report import Row


def make_trace(
    item: Item, model: str, completion: Completion, gen: Generator, panel: Panel
) -> Trace:
    """A graded trace of one completion."""
    grader = get_grader(item.grader)
    ext = grader.extract(completion.response)
    prediction = ext.value if ext else None
    return Trace(
        item_id=item.item_id,
        dataset=item.dataset,
        model=model,
        messages=[Message(m["role"], m["content"]) for m in panel.prompt.messages(item.question)],
        response=completion.response,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        latency_s=completion.latency_s,
        gold=item.gold,
        prediction=prediction,
        correct=grader.is_correct(prediction, item.gold),
        generator=gen,
    )


def generate(
    panel: Panel,
    items: Sequence[Item],
    out: Path,
    *,
    models: Sequence[str] | None = None,
    backend_factory: Callable[[str, dict], Backend] = make_backend,
    on_progress: Callable[[str, Trace, float], None] | None = None,
    on_start: Callable[[str, int, int], None] | None = None,
) -> list[Row]:
    """Generate a trace for every (model, item) not yet in `out`; return per-model summaries."""
    names = list(models) if models else panel.names
    dec = panel.decoding
    params = GenParams(dec.max_tokens, dec.temperature, dec.top_logprobs)
    for name in names:
        done = done_keys(out)
        todo = [it for it in items if (name, it.item_id) not in done]
        if on_start:
            on_start(name, len(items) - len(todo), len(items))
        if not todo:
            continue
        backend = backend_factory(name, panel.get(name).spec())
        gen = Generator(
            backend.kind, dec.temperature, dec.top_logprobs, dec.max_tokens, backend.version(),
            getattr(backend, "n_parallel", None),
        )
        prompts = [
            [Message(m["role"], m["content"]) for m in panel.prompt.messages(it.question)] for it in todo
        ]
        t0 = time.perf_counter()
        try:
            for idx, completion in backend.complete_many(prompts, params):
                trace = make_trace(todo[idx], name, completion, gen, panel)
                append_traces(out, [trace])
                if on_progress:
                    on_progress(name, trace, time.perf_counter() - t0)
        finally:
            backend.close()
    return summarize(out, names, {it.item_id for it in items})


def summarize(
    path: Path, models: Sequence[str], item_ids: set[str] | None = None
) -> list[Row]:
    """Per model and dataset: accuracy, completion tokens, truncations, summed latency."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    if not path.exists():
        return []
    for t in iter_traces(path):
        if t.model not in models or (item_ids is not None and t.item_id not in item_ids):
            continue
        a = acc[(t.model, t.dataset)]
        a[0] += 1
        a[1] += bool(t.correct)
        a[2] += t.usage.completion_tokens
        a[3] += t.finish_reason == "length"
        a[4] += t.latency_s
    return [
        Row(m, d, int(a[0]), int(a[1]), int(a[2]), int(a[3]), round(a[4], 1))
        for (m, d), a in sorted(acc.items(), key=lambda kv: (models.index(kv[0][0]), kv[0][1]))
    ]
