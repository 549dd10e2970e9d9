"""The decision log on a real SQLite file and a real PostgreSQL server: write, read back, outages."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import free_port, wait_for

from confroute.decisions import schema
from confroute.decisions.log import DecisionLog, DecisionRecord, FeedbackRecord
from confroute.decisions.store import open_store
from confroute.features import FEATURE_NAMES

from .pg import PgServer, remove, start_postgres


def rec(request_id: str, stage: int = 0, version: str = "v1", created: float | None = None,
        prediction: str | None = "18") -> DecisionRecord:
    signals: dict[str, float | None] = dict.fromkeys(FEATURE_NAMES, 0.5)
    signals["agree_prev"] = None  # undefined for the first model
    return DecisionRecord(f"{request_id}-{stage}-{time.monotonic_ns()}", request_id, stage,
                          "smollm2-135m", signals, 0.7, 0.5, "accept", "confident", 0.5, version,
                          0.001, created or time.time(), prediction, "The answer is: 18", "route")


def _roundtrip(url: str, spill: Path) -> None:
    log = DecisionLog(url, spill, retry_s=0.1)
    log.start()
    t0 = time.time()
    log.submit(rec("old", created=t0 - 100, version="v0"))
    for i in range(20):
        log.submit(rec(f"r{i}", stage=i % 2))
    log.submit(msgspec.structs.replace(rec("max"), prompt_tokens=2**31 - 1, completion_tokens=0))
    log.submit(FeedbackRecord("r3", 1, True, time.time(), gold="18"))
    log.submit(FeedbackRecord("r3", 1, False, time.time()))  # the latest label wins
    assert log.flush(10)
    rows = log.read(since=t0 - 1)
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(20)] + ["max"]
    # the largest token count the service accepts (traces.TokenCount) fits either store
    assert (rows[-1].prompt_tokens, rows[-1].completion_tokens) == (2**31 - 1, 0)
    assert math.isnan(rows[0].signals["agree_prev"]) and rows[0].signals[FEATURE_NAMES[0]] == 0.5
    labeled = [r for r in rows if r.correct is not None]
    assert [(r.request_id, r.stage, r.correct) for r in labeled] == [("r3", 1, False)]
    assert [r.request_id for r in log.read(version="v0")] == ["old"]
    assert [s.stage for s in open_store(url).stages("r5")] == [1]
    assert log.health().up and log.health().written == 24
    log.close()


def test_sqlite_roundtrip(tmp_path: Path) -> None:
    _roundtrip(str(tmp_path / "log" / "decisions.db"), tmp_path / "spill.jsonl")


def test_sqlite_outage_spills_then_replays(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("a file where the database directory should be")
    log = DecisionLog(str(blocker / "decisions.db"), tmp_path / "spill.jsonl", retry_s=0.1)
    log.start()
    for i in range(30):
        log.submit(rec(f"r{i}"))
    assert log.flush(10)
    h = log.health()
    assert (h.up, h.spilled, h.written) == (False, 30, 0) and h.last_error
    blocker.unlink()  # the disk is back
    log.submit(rec("after"))
    wait_for(lambda: log.health().up and log.health().spilled == 0)
    assert log.flush(10)
    assert len(log.read()) == 31 and not (tmp_path / "spill.jsonl").exists()
    log.close()


def test_spill_is_bounded_and_survives_restart(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("x")
    url, spill = str(blocker / "decisions.db"), tmp_path / "spill.jsonl"
    log = DecisionLog(url, spill, spill_max_bytes=3000, retry_s=60)
    log.start()
    for i in range(20):
        log.submit(rec(f"r{i}"))
    assert log.flush(10)
    h = log.health()
    assert h.dropped > 0 and h.spilled + h.dropped == 20 and h.spill_bytes <= 3000
    log.close()
    blocker.unlink()
    again = DecisionLog(url, spill)  # a restarted service replays what the last one kept
    again.start()
    wait_for(lambda: again.health().spilled == 0)
    assert len(again.read()) == h.spilled
    again.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    server = start_postgres(free_port())
    yield server
    remove(server)


def test_postgres_roundtrip(postgres: PgServer, tmp_path: Path) -> None:
    _roundtrip(postgres.url, tmp_path / "spill.jsonl")


# the decisions table as builds before 2026-12-02 19:00 wrote it: no token columns
_OLD_DECISIONS = """CREATE TABLE decisions (
  id {serial} PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, request_id TEXT NOT NULL,
  stage INTEGER NOT NULL, model TEXT NOT NULL, signals TEXT NOT NULL, p_correct {real},
  threshold {real}, decision TEXT NOT NULL, reason TEXT NOT NULL, lam {real},
  version TEXT NOT NULL, latency_s {real} NOT NULL, created {real} NOT NULL,
  prediction TEXT, response TEXT, endpoint TEXT NOT NULL)"""
_OLD_FEEDBACK = """CREATE TABLE feedback (
  request_id TEXT NOT NULL, stage INTEGER NOT NULL, correct {boolean} NOT NULL, gold TEXT,
  created {real} NOT NULL, PRIMARY KEY (request_id, stage))"""
_OLD_ROW = ("INSERT INTO decisions (record_id, request_id, stage, model, signals, p_correct, "
            "threshold, decision, reason, lam, version, latency_s, created, prediction, response, "
            "endpoint) VALUES ('old-0', 'old', 0, 'smollm2-135m', '{{}}', 0.7, 0.5, 'accept', "
            "'confident', 0.5, 'v0', 0.001, 1.0, '18', 'x', 'chat')")


def _old_log_upgrades(url: str, spill: Path, execute: Callable[[str], None],
                      connect: Callable[[], Any]) -> None:
    """A log an older build wrote: a reader reads it unchanged (tokens None), the next writer
    adds the token columns, and old and new rows read back side by side."""
    for sql in (_OLD_DECISIONS, _OLD_FEEDBACK, _OLD_ROW):
        execute(sql)
    reader = open_store(url, readonly=True)
    assert [(r.request_id, r.prompt_tokens, r.completion_tokens) for r in reader.read(None, None)
            ] == [("old", None, None)]
    with contextlib.closing(connect()) as conn:
        assert not set(schema.ADDED) & schema.columns(conn)  # the reader changed nothing
    log = DecisionLog(url, spill, retry_s=0.1)
    log.start()
    log.submit(msgspec.structs.replace(rec("new"), prompt_tokens=80, completion_tokens=300))
    assert log.flush(10)
    got = [(r.request_id, r.prompt_tokens, r.completion_tokens) for r in log.read()]
    assert got == [("old", None, None), ("new", 80, 300)]
    assert log.health().written == 1 and log.health().up
    log.close()
    again = DecisionLog(url, spill)  # a second start finds the columns there
    again.start()
    again.submit(rec("third"))
    assert again.flush(10)
    assert [r.completion_tokens for r in again.read()] == [None, 300, None]
    again.close()


@dataclass(frozen=True)
class _Db:
    """An empty database to write an older build's tables into, SQLite or PostgreSQL."""

    url: str
    connect: Callable[[], Any]
    types: dict[str, str]

    def execute(self, sql: str) -> None:
        with contextlib.closing(self.connect()) as conn:
            conn.execute(sql.format(**self.types))
            conn.commit()


def _sqlite_db(tmp_path: Path) -> _Db:
    db = tmp_path / "old.db"
    return _Db(str(db), lambda: sqlite3.connect(db),
               {"serial": "INTEGER", "real": "REAL", "boolean": "INTEGER"})


def _postgres_db(postgres: PgServer, name: str) -> _Db:
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")  # a fixed test name
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    return _Db(url, lambda: psycopg.connect(url, autocommit=True),
               {"serial": "BIGSERIAL", "real": "DOUBLE PRECISION", "boolean": "BOOLEAN"})


def test_sqlite_log_of_an_older_build_gets_the_token_columns(tmp_path: Path) -> None:
    db = _sqlite_db(tmp_path)
    _old_log_upgrades(db.url, tmp_path / "spill.jsonl", db.execute, db.connect)


def test_postgres_log_of_an_older_build_gets_the_token_columns(postgres: PgServer,
                                                               tmp_path: Path) -> None:
    db = _postgres_db(postgres, "old_log")
    _old_log_upgrades(db.url, tmp_path / "spill.jsonl", db.execute, db.connect)


def _two_writers_add_a_column_at_once(connect: Callable[[], Any], execute: Callable[[str], None],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers start on an older log: the second saw the columns missing, the first added
    them before its ALTER ran; that ALTER fails and the upgrade goes on (several workers)."""
    for sql in (_OLD_DECISIONS, _OLD_FEEDBACK):
        execute(sql)
    with contextlib.closing(connect()) as first, contextlib.closing(connect()) as second:
        real, stale = schema.columns, schema.columns(second)
        schema.upgrade(first)
        checks = iter([stale])  # the second writer's first look predates the first's ALTER
        monkeypatch.setattr(schema, "columns", lambda conn: next(checks, None) or real(conn))
        schema.upgrade(second)
        assert set(schema.ADDED) <= real(second)


def test_sqlite_two_writers_upgrade_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _sqlite_db(tmp_path)
    _two_writers_add_a_column_at_once(db.connect, db.execute, monkeypatch)


def test_postgres_two_writers_upgrade_at_once(postgres: PgServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = _postgres_db(postgres, "two_writers")
    _two_writers_add_a_column_at_once(db.connect, db.execute, monkeypatch)


def test_postgres_outage_spills_then_replays(postgres: PgServer, tmp_path: Path) -> None:
    log = DecisionLog(postgres.url, tmp_path / "spill.jsonl", retry_s=0.2)
    log.start()
    log.submit(rec("before"))
    assert log.flush(10) and log.health().up
    postgres.stop()
    try:
        for i in range(10):
            log.submit(rec(f"during{i}"))
        assert log.flush(20)
        h = log.health()
        assert (h.up, h.spilled) == (False, 10), h
    finally:
        postgres.start()
    wait_for(lambda: log.health().up and log.health().spilled == 0, timeout=30)
    ids = {r.request_id for r in log.read()}
    assert {"before", *(f"during{i}" for i in range(10))} <= ids
    log.close()


def _refused_then_written(url: str, tmp_path: Path, bad_stage: int) -> None:
    """A record the store cannot hold is set aside; the records around it, and later ones, land."""
    log = DecisionLog(url, tmp_path / "spill.jsonl", retry_s=0.1)
    log.start()
    t0 = time.time()  # the PostgreSQL server is shared by this module's tests
    log.submit(rec("before"))
    log.submit(rec("poison", stage=bad_stage))  # only reachable by a bug upstream: the API bounds it
    log.submit(rec("after"))
    assert log.flush(10)
    log.submit(rec("later"))
    assert log.flush(10)
    h = log.health()
    assert (h.up, h.written, h.rejected, h.spilled, h.dropped) == (True, 3, 1, 0, 0), h
    assert {r.request_id for r in log.read(since=t0)} == {"before", "after", "later"}
    rejected = (tmp_path / "spill.rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and '"poison"' in rejected[0]
    log.close()


def test_sqlite_sets_a_refused_record_aside(tmp_path: Path) -> None:
    _refused_then_written(str(tmp_path / "decisions.db"), tmp_path, 2**63)  # > SQLite INTEGER


def test_postgres_sets_a_refused_record_aside_and_stores_nul_text(
    postgres: PgServer, tmp_path: Path
) -> None:
    _refused_then_written(postgres.url, tmp_path, 2**31)  # > PostgreSQL INTEGER
    log = DecisionLog(postgres.url, tmp_path / "spill2.jsonl")
    log.start()
    nul = rec("nul")
    nul.response, nul.prediction = "The answer is: 7\x00", "7\x00"
    log.submit(nul)
    log.submit(FeedbackRecord("nul", 0, True, time.time(), gold="7\x00"))
    assert log.flush(10) and log.health().up and log.health().rejected == 0
    [row] = [r for r in log.read() if r.request_id == "nul"]
    assert (row.response, row.prediction, row.gold) == (
        "The answer is: 7\ufffd", "7\ufffd", "7\ufffd")
    log.close()


def test_replay_skips_torn_lines_and_sets_refused_records_aside(tmp_path: Path) -> None:
    """A spill file from a crash (torn last line) with a bad record in it still drains."""
    import msgspec

    spill = tmp_path / "spill.jsonl"
    lines = [msgspec.json.encode(r) for r in (rec("s1"), rec("poison", stage=2**63), rec("s2"))]
    spill.write_bytes(b"\n".join(lines) + b'\n{"type": "decision", "record_id": "to')
    log = DecisionLog(str(tmp_path / "decisions.db"), spill, retry_s=0.1)
    log.start()
    log.submit(rec("new"))
    wait_for(lambda: log.health().spilled == 0)
    assert log.flush(10)
    h = log.health()
    assert (h.up, h.rejected, h.dropped) == (True, 1, 1), h  # the torn line is counted lost
    assert {r.request_id for r in log.read()} == {"s1", "s2", "new"}
    assert not spill.exists()
    log.close()


def test_settled_waits_for_the_commit_and_fails_a_record_that_was_not_kept(tmp_path: Path) -> None:
    """Durable mode: settled() returns once the record is in the store; a record dropped for
    lack of spill room fails its request with NotReady instead of being acknowledged."""
    import asyncio

    from confroute.errors import NotReady

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", interval_s=5.0)
    log.start()
    try:
        async def one() -> float:
            t0 = time.monotonic()
            await log.settled(log.submit(rec("a")))  # the writer sleeps 5 s unless woken
            return time.monotonic() - t0

        assert asyncio.run(one()) < 2.0
        assert [r.request_id for r in log.store.read(None, None)] == ["a"]
    finally:
        log.close()
    # a PostgreSQL nobody listens on: every record goes to a spill file with no room
    full = DecisionLog(f"postgresql://u@127.0.0.1:{free_port()}/none", tmp_path / "s2.jsonl",
                       spill_max_bytes=10, retry_s=60)
    full.start()
    try:
        with pytest.raises(NotReady, match="could not keep"):
            asyncio.run(full.settled(full.submit(rec("b"))))
    finally:
        full.close()


def test_fast_mode_does_not_wait(tmp_path: Path) -> None:
    import asyncio

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", durable=False)
    # no writer started: a durable wait would time out, a fast one returns at once
    asyncio.run(log.settled(log.submit(rec("a"))))
    assert log.health().queued == 1


def test_inline_commit_writes_on_the_loop_and_groups_the_waiting_requests(tmp_path: Path) -> None:
    """inline_commit (SQLite, one process): the waiting requests' loop commits them itself, one
    scheduled commit and one transaction for every request waiting by then; after a group, the
    next lone request waits the group-commit window, the one after it does not. Without
    inline_commit, and with no writer thread, the same wait times out."""
    import asyncio

    from confroute.errors import NotReady

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", inline_commit=True,
                      settle_timeout_s=2.0, group_commit_s=0.3)  # no writer thread: only the loop
    writes: list[int] = []
    write = log.store.write
    log.store.write = lambda records: (writes.append(len(records)), write(records))[1]
    commits = [0]
    commit = log._commit_inline

    def counted(loop: asyncio.AbstractEventLoop) -> None:
        commits[0] += 1
        commit(loop)

    log._commit_inline = counted  # type: ignore[method-assign]

    async def side_by_side() -> None:
        seqs = [log.submit(rec(f"r{i}")) for i in range(5)]
        await asyncio.gather(*(log.settled(s) for s in seqs))
        await asyncio.sleep(0.4)  # any further commit scheduled for this group would run now

    async def alone(request_id: str) -> float:
        t0 = time.monotonic()
        await log.settled(log.submit(rec(request_id)))
        return time.monotonic() - t0

    try:
        asyncio.run(side_by_side())
        assert (writes, commits[0]) == ([5], 1)
        assert sorted(r.request_id for r in log.store.read(None, None)) == [
            f"r{i}" for i in range(5)]
        after_group, after_lone = asyncio.run(alone("a")), asyncio.run(alone("b"))
        assert after_group >= 0.25 and after_lone < 0.25, (after_group, after_lone)
        assert writes == [5, 1, 1]
    finally:
        log.close()
    threadless = DecisionLog(str(tmp_path / "e.db"), tmp_path / "s2.jsonl", settle_timeout_s=0.3)
    with pytest.raises(NotReady, match="did not confirm"):
        asyncio.run(threadless.settled(threadless.submit(rec("x"))))
    threadless.close()


def test_inline_commit_leaves_the_batch_to_a_busy_writer_thread(tmp_path: Path) -> None:
    """While the writer thread holds the log (a slow write), an inline commit neither waits for
    it on the loop nor writes: it wakes the thread (asleep for 5 s otherwise), which writes the
    waiting record after its own."""
    import asyncio
    import threading

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", inline_commit=True,
                      interval_s=5.0, settle_timeout_s=3.0)
    loops: list[str] = []
    write, slow = log.store.write, threading.Event()

    def traced(records: list[object]) -> None:
        loops.append(threading.current_thread().name)
        if not slow.is_set():
            slow.set()
            time.sleep(0.5)  # the thread's write of the first record, while the next waits
        write(records)  # type: ignore[arg-type]

    log.store.write = traced  # type: ignore[method-assign]
    held: list[float] = []
    commit = log._commit_inline

    def timed(loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.monotonic()
        commit(loop)
        held.append(time.monotonic() - t0)

    log._commit_inline = timed  # type: ignore[method-assign]
    log.start()
    try:
        log.submit(rec("first"))
        log._wake.set()
        assert slow.wait(5)
        log._wake.clear()  # from here only the inline commit can wake the thread in time

        async def wait_second() -> float:
            t0 = time.monotonic()
            await log.settled(log.submit(rec("second")))
            return time.monotonic() - t0

        waited = asyncio.run(wait_second())
        assert loops == ["decision-log", "decision-log"]
        assert held and max(held) < 0.2, held  # the loop did not wait for the thread's write
        assert waited < 2.0
        assert sorted(r.request_id for r in log.store.read(None, None)) == ["first", "second"]
    finally:
        log.close()


def test_no_inline_commit_after_close(tmp_path: Path) -> None:
    """After close() nothing writes: a later wait fails with NotReady and the store stays closed."""
    import asyncio

    from confroute.errors import NotReady

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", inline_commit=True,
                      settle_timeout_s=0.3)
    asyncio.run(log.settled(log.submit(rec("before"))))
    log.close()
    with pytest.raises(NotReady, match="did not confirm"):
        asyncio.run(log.settled(log.submit(rec("after"))))
    assert log.store._conn is None  # type: ignore[attr-defined]
    assert [r.request_id for r in open_store(str(tmp_path / "d.db")).read(None, None)] == [
        "before"]


def test_inline_commit_leaves_wal_checkpoints_to_the_writer_thread(tmp_path: Path) -> None:
    """With inline commits the loop's connection never checkpoints (SQLite would, inside the
    commit that crosses 1,000 WAL pages); the writer thread does, on its own connection."""
    import asyncio
    import threading

    log = DecisionLog(str(tmp_path / "d.db"), tmp_path / "spill.jsonl", inline_commit=True,
                      interval_s=0.02)
    log.checkpoint_s = 0.05
    by: list[str] = []
    checkpoint = log.store.checkpoint  # type: ignore[attr-defined]
    log.store.checkpoint = lambda: (by.append(threading.current_thread().name), checkpoint())[1]
    log.start()

    async def many() -> None:
        for i in range(40):
            await asyncio.gather(*(log.settled(log.submit(rec(f"r{i}-{j}"))) for j in range(10)))

    try:
        asyncio.run(many())
        wait_for(lambda: len(by) >= 2)
        assert set(by) == {"decision-log"}
        conn = log.store._conn  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert len(log.store.read(None, None)) == 400
    finally:
        log.close()
    plain = DecisionLog(str(tmp_path / "e.db"), tmp_path / "s2.jsonl")
    plain.start()
    try:
        asyncio.run(plain.settled(plain.submit(rec("x"))))
        assert plain.store._conn.execute(  # type: ignore[attr-defined]
            "PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        plain.close()


def test_a_hand_edited_row_is_a_read_error_naming_it(tmp_path: Path) -> None:
    """A text `stage` (SQLite keeps what it is given) was a TypeError in the traffic report's
    sort; every logged row is read typed, and `confroute report traffic` says which request."""
    from typer.testing import CliRunner

    from confroute.cli import app

    db = tmp_path / "d.db"
    store = open_store(str(db))
    store.write([rec("ok"), rec("edited", stage=1)])
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE decisions SET stage = 'x' WHERE request_id = 'edited'")
    with pytest.raises(ValueError, match=r"request 'edited'.*stage"):
        open_store(str(db), readonly=True).read(None, None)
    result = CliRunner().invoke(app, ["report", "traffic", "--log", str(db)])
    assert result.exit_code == 2 and "request 'edited'" in result.output, result.output
    assert "Traceback" not in result.output
