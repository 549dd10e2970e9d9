"""The decision log's spill file: a bounded JSONL file of records not yet in the store, which
survives restarts (decisions/log.py writes it while the store is down and replays it after)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from confroute.decisions.records import Record

log = logging.getLogger("confroute.decision_log")


class Spill:
    """A bounded JSONL file of records not yet in the store (survives restarts)."""

    def __init__(self, path: Path, max_bytes: int, fsync: bool = False) -> None:
        self.path, self.max_bytes, self.fsync = path, max_bytes, fsync
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(Record)
        self.records = self._count()
        self.unreadable = 0

    def _count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, records: Sequence[Record]) -> int:
        """Append what fits; return how many records were dropped for lack of room."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        room, kept = self.max_bytes - self.bytes, 0
        with self.path.open("ab") as fh:
            for r in records:
                line = self._enc.encode(r) + b"\n"
                if len(line) > room:
                    break
                fh.write(line)
                room -= len(line)
                kept += 1
            fh.flush()
            if self.fsync:  # durable mode: on disk before the waiting requests are answered
                os.fsync(fh.fileno())
        self.records += kept
        return len(records) - kept

    def chunks(self, size: int = 1000) -> Iterator[list[Record]]:
        """The records in chunks; an unreadable line (torn by a crash mid-write) is skipped and
        counted in `unreadable`."""
        chunk: list[Record] = []
        with self.path.open("rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    chunk.append(self._dec.decode(line))
                except msgspec.DecodeError as exc:
                    self.unreadable += 1
                    log.error("spill file %s: skipped an unreadable line (%s)", self.path, exc)
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.records = 0
