"""Working trace files <-> what is committed, for generation that spans sessions.

    python training/scripts/partial_traces.py restore   # before generating
    python training/scripts/partial_traces.py save      # before committing

`restore`: every working file `var/traces/<set>.<model>.jsonl` that is missing is rebuilt from
what ships: that model's traces in `data/reference-traces/<set>.traces.npz` (if the set ships),
then its committed partial work `data/reference-traces/partial/<set>.<model>.jsonl.gz` (if any).
Each file is written whole under a temporary name and renamed, so a failure leaves no half file;
a file that exists is left alone, so running it twice changes nothing.

`save`: for every working file, the traces the shipped set does not hold yet go to its partial
file (none: the partial file is removed), so a set being extended commits only its new items.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from confroute.modelstore import REFERENCE_MODELS
from confroute.traces import Trace, iter_traces, read_traces, write_traces

SHIPPED = Path("data/reference-traces")
PARTIAL = SHIPPED / "partial"
WORK = Path("var/traces")


def _shipped(stem: str) -> list[Trace]:
    path = SHIPPED / f"{stem}.traces.npz"
    return read_traces(path) if path.exists() else []


def restore() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    stems = {p.name.removesuffix(".traces.npz") for p in SHIPPED.glob("*.traces.npz")}
    stems |= {p.name.split(".")[0] for p in PARTIAL.glob("*.jsonl.gz")}
    for stem in sorted(stems):
        shipped = _shipped(stem)
        for model in REFERENCE_MODELS:
            work = WORK / f"{stem}.{model}.jsonl"
            part = PARTIAL / f"{stem}.{model}.jsonl.gz"
            mine = [t for t in shipped if t.model == model]
            if work.exists() or not (mine or part.exists()):
                continue
            extra = list(iter_traces(part)) if part.exists() else []
            tmp = work.with_suffix(".jsonl.tmp")
            write_traces(tmp, [*mine, *extra])
            os.replace(tmp, work)
            print(f"{work}: {len(mine)} shipped + {len(extra)} partial")


def save() -> None:
    PARTIAL.mkdir(parents=True, exist_ok=True)
    for work in sorted(WORK.glob("*.jsonl")):
        stem, _, model = work.name.removesuffix(".jsonl").partition(".")
        done = {t.item_id for t in _shipped(stem) if t.model == model}
        new = [t for t in iter_traces(work) if t.item_id not in done]
        part = PARTIAL / f"{stem}.{model}.jsonl.gz"
        if new:
            print(f"{part}: {write_traces(part, new)} traces")
        elif part.exists():
            part.unlink()
            print(f"{part}: removed (the shipped set holds them all)")


if __name__ == "__main__":
    if sys.argv[1:] not in (["restore"], ["save"]):
        raise SystemExit(__doc__)
    restore() if sys.argv[1] == "restore" else save()
