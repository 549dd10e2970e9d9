"""The decision log: every decision and label, written durably and kept through store outages.

Requests call `submit` (a queue put). One background thread wakes every `interval_s` and drains
the queue in batches (one transaction each) into the store: SQLite WAL by default, PostgreSQL by
URL (schema in store.py). When the store fails, records go to a bounded spill file until it is
back (decisions/keeper.py: spill, replay, records the store refuses set aside, drops counted,
never silent). `read(since=, version=)` returns rows with feedback joined. Sequence numbers
and the requests waiting on them are decisions/acks.py's.

Durability (`durable=True`, the default): `submit` returns the record's sequence number and
`settled(seq)` waits until the writer has committed it (SQLite synchronous=FULL, PostgreSQL's
commit) or appended it to the spill file and fsynced that; the service sends no reply before its
records settle, so a decision the client saw acknowledged survives a SIGKILL. A waiting request
wakes the writer, which then takes everything queued in one transaction (group commit: one
fsync for all requests waiting at that moment). With `inline_commit` (SQLite in a one-process
service) the waiting requests' event loop does that group's commit itself, once the callbacks
ready at that moment have run (after the group-commit window when requests overlap): the
thread needed the GIL several times per commit while the loop was busy, so a commit of 0.33 ms
took 3.1 ms from submit (measured), and the loop sat idle with every connection waiting. The
loop is then blocked for one commit per group (a fraction of a ms on a local disk; up to
SQLite's 5 s busy timeout for the first failed write if another process holds the write lock);
the thread still writes whatever the loop did not, everything while the store is down or the
spill file holds records, and the WAL's checkpoints. A record that could not be kept (spill
full) fails its request with NotReady instead of acknowledging it. `durable=False` (CONFROUTE_LOG_
DURABILITY=fast) is the older behaviour: the reply goes out and the record follows within
`interval_s`, so a crash can lose the last moments' decisions.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import msgspec

from confroute.decisions.acks import Acks
from confroute.decisions.keeper import RecordKeeper
from confroute.decisions.records import (
    DecisionRecord,
    FeedbackRecord,
    LoggedDecision,
    Record,
    StageInfo,
    new_record_id,
)
from confroute.decisions.store import SqliteStore
from confroute.errors import NotReady

__all__ = ["DecisionLog", "DecisionRecord", "FeedbackRecord", "LogHealth", "LoggedDecision",
           "StageInfo", "new_record_id"]

log = logging.getLogger("confroute.decision_log")
_STOP = object()


class LogHealth(msgspec.Struct):
    """The log's state, for /healthz and /metrics."""

    backend: str
    up: bool
    queued: int
    written: int
    spilled: int  # records waiting in the spill file
    spill_bytes: int
    dropped: int  # records lost because the spill file was full
    failures: int  # failed store writes or replays
    last_error: str | None
    rejected: int = 0  # records the store refused (set aside in the rejected file)


class DecisionLog:
    """Queue + background writer + spill buffer in front of a Store."""

    def __init__(self, url: str, spill_path: str | Path, *, spill_max_bytes: int = 256 * 2**20,
                 retry_s: float = 2.0, interval_s: float = 0.05, recent: int = 100_000,
                 durable: bool = True, settle_timeout_s: float = 10.0,
                 group_commit_s: float = 0.003, inline_commit: bool = False) -> None:
        self.url = url
        self.durable = durable
        self.settle_timeout_s = settle_timeout_s
        self.keeper = RecordKeeper(url, Path(spill_path), spill_max_bytes, retry_s, durable)
        self.store = self.keeper.store
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._recent: OrderedDict[str, list[StageInfo]] = OrderedDict()
        self._recent_max = recent
        self._lock = threading.Lock()
        self.acks = Acks(lambda: self.keeper.last_error)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.interval_s = interval_s
        # durable: once woken by a waiting request, wait this long so the requests of that
        # moment share the transaction (measured: 3 ms took /v1/route from 0.66x to 0.84x of
        # fast mode's requests/s at 16 connections; bench/service.py --only durability)
        self.gather_s = group_commit_s if durable else 0.0
        self.batch_size = 2000  # records per transaction
        # one drain-write-settle at a time: the writer thread's, or a loop's inline commit
        self._io = threading.Lock()
        self._sqlite = self.store if isinstance(self.store, SqliteStore) else None
        self.inline = durable and inline_commit and self._sqlite is not None
        self._inline_due: set[asyncio.AbstractEventLoop] = set()  # loops with a commit queued
        self._closed = False
        if self._sqlite is not None:  # inline: WAL checkpoints are the thread's, off the loop
            self._sqlite.autocheckpoint = not self.inline
        self.checkpoint_s = 1.0  # inline: how often the thread checkpoints the WAL

    # -- request side ------------------------------------------------------------------------

    def submit(self, record: Record) -> int:
        """Queue one record for writing; never blocks, never raises. Returns its sequence number
        (for `settled`)."""
        if isinstance(record, DecisionRecord):
            self._remember(record)
        with self.acks.cond:
            self.acks.submitted += 1
            seq = self.acks.submitted
            self._queue.put(record)  # under the lock: queue order is sequence order
        return seq

    async def settled(self, seq: int) -> None:
        """Durable mode: return once record `seq` (and every one before it) is committed or
        fsynced to the spill file; NotReady if it was dropped or the writer does not confirm
        within settle_timeout_s. Fast mode: return at once."""
        if not self.durable or seq <= 0:
            return
        loop = asyncio.get_running_loop()
        fut = self.acks.wait_on(seq, loop)
        if fut.done():
            pass
        elif self._inline_ok():
            if loop not in self._inline_due:  # one commit for every request waiting by then
                self._inline_due.add(loop)
                # requests side by side (now or in the last group): the group-commit window, as
                # the thread waits it; a lone request is written once the ready callbacks ran
                loop.call_later(self.gather_s if self.acks.side_by_side() else 0.0,
                                self._commit_inline, loop)
        else:
            self._wake.set()
        try:
            async with asyncio.timeout(self.settle_timeout_s):  # no extra task, unlike wait_for
                await fut
        except TimeoutError:
            raise NotReady(f"the decision log did not confirm this request's decision within "
                           f"{self.settle_timeout_s:g} s ({self.keeper.last_error or 'busy'}); retry",
                           {"Retry-After": "1"}) from None

    def _inline_ok(self) -> bool:
        """Whether a loop may commit now: inline mode, open, the store up, nothing spilled."""
        return self.inline and not self._closed and self.keeper.up and not self.keeper.spill.records

    def _commit_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the event loop: write what is queued in one transaction and settle its waiters;
        when the writer thread is busy (or the store went down meanwhile), wake it instead."""
        self._inline_due.discard(loop)
        if not (self._inline_ok() and self._io.acquire(blocking=False)):
            self._wake.set()
            return
        try:
            batch, stopping = self._drain()
            if stopping:  # close() asked the thread to stop: leave that to the thread
                self._queue.put(_STOP)
            self._handle(batch)
        finally:
            self._io.release()
        if not self._queue.empty():  # more than one batch's worth, or the stop: the thread's
            self._wake.set()

    def _remember(self, r: DecisionRecord) -> None:
        with self._lock:
            stages = self._recent.setdefault(r.request_id, [])
            stages.append(StageInfo(r.stage, r.model, r.decision, r.prediction))
            self._recent.move_to_end(r.request_id)
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    def stages(self, request_id: str) -> list[StageInfo]:
        """Logged stages of a request (recent: from memory, older: from the store); [] if none."""
        with self._lock:
            cached = self._recent.get(request_id)
        if cached is not None:
            return sorted(cached, key=lambda s: s.stage)
        return sorted(self.store.stages(request_id), key=lambda s: s.stage)

    def read(self, since: float | datetime | None = None,
             version: str | None = None) -> list[LoggedDecision]:
        """Logged decisions, oldest first, with feedback joined; `since`: a datetime or unix s."""
        if isinstance(since, datetime):
            since = since.timestamp()
        return self.store.read(since, version)

    def health(self) -> LogHealth:
        k = self.keeper
        return LogHealth(
            self.store.kind, k.up, self._queue.qsize(), k.written, k.spill.records,
            k.spill.bytes, k.dropped, k.failures, k.last_error, k.rejects.records,
        )

    # -- writer side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted record is written, spilled or counted dropped."""
        self._wake.set()
        return self.acks.wait_all(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the store."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None
        with self._io:  # no inline commit after this: later waits time out (NotReady)
            self._closed = True
            self.store.close()

    def _run(self) -> None:
        with self._io:  # an inline commit may connect too: one connection, made once
            self.keeper.connect()
        stopping, last_checkpoint = False, time.monotonic()
        while not stopping:
            with self._io:
                batch, stopping = self._drain()
                self._handle(batch)
            if len(batch) < self.batch_size and not stopping:
                # sleep rather than block on the queue: a put then never wakes this thread,
                # so requests do not hand the GIL to the writer once per record
                if self._wake.wait(self.interval_s) and self.gather_s and \
                        self.acks.side_by_side():
                    # durable, with requests arriving side by side (now or in the last group):
                    # let this moment's join the transaction; a lone request is written at once
                    time.sleep(self.gather_s)
                self._wake.clear()
            if self.inline and self._sqlite is not None:
                last_checkpoint = self._checkpoint(self._sqlite, last_checkpoint)
        with self._io:
            self.keeper.next_try = 0.0
            if self.keeper.spill.records:
                self.keeper.replay()

    def _checkpoint(self, sqlite: SqliteStore, last: float) -> float:
        """Inline mode: checkpoint the WAL every checkpoint_s, outside the log's lock (the loop
        goes on committing); a failure is logged and tried again next time."""
        if time.monotonic() - last < self.checkpoint_s:
            return last
        try:
            sqlite.checkpoint()
        except Exception as exc:
            log.warning("decision log: WAL checkpoint failed (%s: %s)", type(exc).__name__, exc)
        return time.monotonic()

    def _drain(self) -> tuple[list[Record], bool]:
        """Up to batch_size queued records, without waiting; and whether to stop."""
        batch: list[Record] = []
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _handle(self, batch: list[Record]) -> None:
        lost = True
        try:
            lost = self.keeper.keep(batch)
        finally:
            # a drop in this batch fails every waiter in it (it may be any of them)
            self.acks.done(len(batch), lost=lost)
