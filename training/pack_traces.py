"""Pack working trace files into the shipped form: sorted, deduplicated, columnar.

    python -m training.pack_traces [--expect N] OUT.traces.npz WORK.jsonl [WORK.jsonl ...]

The output's name picks its form (`confroute.traces.write_traces`): `.traces.npz` is what ships.

With --expect N, refuses (exit 1) unless every model present covers the same N items.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from confroute.traces import Trace, read_traces, write_traces


def pack(sources: list[Path], dst: Path, expect: int | None = None) -> int:
    """Keep the last trace per (model, item), sort by model then item, write them to `dst`."""
    latest = {(t.model, t.item_id): t for t in read_traces([p for p in sources if p.exists()])}
    if expect is not None:
        _check_coverage(list(latest.values()), expect)
    ordered = sorted(latest.values(), key=lambda t: (t.model, _item_key(t.item_id)))
    return write_traces(dst, ordered)


def _check_coverage(traces: list[Trace], expect: int) -> None:
    items: dict[str, set[str]] = defaultdict(set)
    for t in traces:
        items[t.model].add(t.item_id)
    sizes = {m: len(s) for m, s in items.items()}
    if not sizes or any(n != expect for n in sizes.values()) or len(set(map(frozenset, items.values()))) > 1:
        raise SystemExit(f"incomplete: items per model {sizes}, expected {expect} each, same items")


def _item_key(item_id: str) -> tuple[str, int]:
    head, _, row = item_id.rpartition("/")
    return head, int(row) if row.isdigit() else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expect", type=int, default=None)
    ap.add_argument("out", type=Path)
    ap.add_argument("sources", type=Path, nargs="+")
    args = ap.parse_args()
    n = pack(args.sources, args.out, args.expect)
    print(f"wrote {n} traces to {args.out}")


if __name__ == "__main__":
    main()
