"""Keeping the decision log's records: the store, and the spill file while it is down.

`RecordKeeper.keep(batch)` writes one batch in one transaction; when the store fails it is marked
down and the batch goes to the spill file, and so does every later batch until a retry (every
`retry_s`) replays the spill into the store (idempotent: record ids are unique). A record the
store refuses while it is up (a value it cannot hold) is set aside in the rejected file beside
the spill, so that one bad record never holds back the others. Records beyond the spill's bound
are dropped and counted. Not thread-safe: decisions/log.py calls it under its own lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from confroute.decisions.records import Record
from confroute.decisions.spill import Spill
from confroute.decisions.store import Store, open_store

log = logging.getLogger("confroute.decision_log")


class RecordKeeper:
    """A Store, the spill file in front of it and the counts /healthz and /metrics show."""

    def __init__(self, url: str, spill_path: Path, spill_max_bytes: int, retry_s: float,
                 fsync: bool) -> None:
        self.store: Store = open_store(url)
        self.spill = Spill(spill_path, spill_max_bytes, fsync=fsync)
        self.rejects = Spill(spill_path.with_suffix(".rejected.jsonl"), spill_max_bytes,
                             fsync=fsync)
        self.retry_s = retry_s
        self.written = self.dropped = self.failures = 0
        self.up = True
        self.last_error: str | None = None
        self.next_try = 0.0

    def connect(self) -> None:
        try:
            self.store.connect()
        except Exception as exc:
            self.mark_down(exc)

    def keep(self, batch: list[Record]) -> bool:
        """Write (or spill) one batch; whether any record of it was dropped."""
        dropped = self.dropped
        if self.spill.records and not self.replay():
            self.to_spill(batch)
        elif batch:
            self.write(batch)
        return self.dropped > dropped

    def write(self, batch: list[Record]) -> None:
        try:
            self.store.write(batch)
            self.written += len(batch)
            self.mark_up()
        except Exception as exc:
            left = self._one_by_one(batch) if _refused(exc) else batch
            if left:
                self.mark_down(exc)
                self.to_spill(left)

    def _one_by_one(self, batch: Sequence[Record]) -> list[Record]:
        """After a batch the store refused: write each record alone, setting aside the ones it
        refuses; the records not reached when the store itself fails (to be spilled)."""
        for i, r in enumerate(batch):
            try:
                self.store.write([r])
                self.written += 1
            except Exception as exc:
                if not _refused(exc):
                    self.mark_down(exc)
                    return list(batch[i:])
                self._reject(r, exc)
        self.mark_up()
        return []

    def _reject(self, r: Record, exc: Exception) -> None:
        log.error("decision log: the store refused record for request %r (%s: %s); set aside "
                  "in %s", r.request_id[:80], type(exc).__name__, exc, self.rejects.path)
        try:
            self.dropped += self.rejects.append([r])
        except OSError:
            self.dropped += 1

    def replay(self) -> bool:
        """Move the spill file into the store; False (and the file kept) if it fails."""
        if time.monotonic() < self.next_try:
            return False
        n, self.spill.unreadable = 0, 0
        try:
            for chunk in self.spill.chunks():
                try:
                    self.store.write(chunk)
                    n += len(chunk)
                except Exception as exc:
                    if not _refused(exc):
                        raise
                    if self._one_by_one(chunk):  # the store went down on the way (marked down)
                        return False
        except Exception as exc:  # the file stays; writing it again later is idempotent
            self.mark_down(exc)
            return False
        self.spill.clear()
        self.written += n
        self.dropped += self.spill.unreadable  # torn lines: lost, and counted
        self.spill.unreadable = 0
        log.warning("decision log back up: replayed %d spilled records", n)
        self.mark_up()
        return True

    def to_spill(self, batch: list[Record]) -> None:
        if not batch:
            return
        try:
            dropped = self.spill.append(batch)
        except OSError as exc:
            dropped = len(batch)
            self.last_error = f"spill file {self.spill.path}: {exc}"
        if dropped:
            self.dropped += dropped
            log.error("decision log spill full: dropped %d records", dropped)

    def mark_down(self, exc: Exception) -> None:
        self.failures += 1
        self.next_try = time.monotonic() + self.retry_s
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.up:
            log.error("decision log %s is down, spilling to %s: %s",
                      self.store.kind, self.spill.path, self.last_error)
        self.up = False

    def mark_up(self) -> None:
        self.up, self.last_error = True, None


def _refused(exc: BaseException) -> bool:
    """A write error about the records (a value the store cannot hold), not about the store."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"DataError", "IntegrityError", "OverflowError", "ValueError",
                         "TypeError", "UnicodeError"})
