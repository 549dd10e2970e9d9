"""Compact a working trace file into the shipped form: sorted, deduplicated, gzip JSONL."""

from __future__ import annotations

import sys
from pathlib import Path

from confroute.traces import read_traces, write_traces


def compact(src: Path, dst: Path) -> int:
    """Keep the last trace per (model, item), sort by model then item, write gzip JSONL."""
    latest = {(t.model, t.item_id): t for t in read_traces(src)}
    ordered = sorted(latest.values(), key=lambda t: (t.model, _item_key(t.item_id)))
    return write_traces(dst, ordered)


def _item_key(item_id: str) -> tuple[str, int]:
    head, _, row = item_id.rpartition("/")
    return head, int(row) if row.isdigit() else -1


if __name__ == "__main__":
    n = compact(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {n} traces to {sys.argv[2]}")
