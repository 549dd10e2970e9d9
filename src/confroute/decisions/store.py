"""Decision-log storage: one store per database (SQLite file, PostgreSQL URL); the tables and
their upgrade are decisions/schema.py's."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec

from confroute.decisions import schema
from confroute.decisions.location import sqlite_path
from confroute.decisions.records import DecisionRecord, FeedbackRecord, LoggedDecision, Record, StageInfo
from confroute.features import FEATURE_NAMES

_encode = msgspec.json.Encoder().encode  # the signals column: 1.6 µs a row, json.dumps 13


class Store(Protocol):
    """A database the decision log writes to; every method may raise on a database failure."""

    kind: str

    def connect(self) -> None: ...
    def write(self, records: Sequence[Record]) -> None: ...
    def read(self, since: float | None, version: str | None) -> list[LoggedDecision]: ...
    def stages(self, request_id: str) -> list[StageInfo]: ...
    def close(self) -> None: ...


class SqlStore:
    """A DB-API store; subclasses open connections and set the SQL dialect."""

    kind = "sql"
    placeholder = "?"
    schema_types: ClassVar[dict[str, str]] = {
        "serial": "INTEGER", "real": "REAL", "boolean": "INTEGER"}

    def __init__(self, readonly: bool = False) -> None:
        self._conn: Any = None
        self._schema_ready = False
        self.readonly = readonly  # readers (retrain, drift): never create or change anything

    def _open(self) -> Any:
        raise NotImplementedError

    def _transaction(self, conn: Any) -> Any:
        return conn  # sqlite3: the connection is a transaction context

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    def connect(self) -> None:
        if self._conn is None:
            conn = self._open()
            self._ready(conn)
            self._conn = conn

    def _ready(self, conn: Any) -> None:
        """A writer creates the tables if missing; a reader checks they are there."""
        if self.readonly:
            schema.check_schema(conn)
        else:
            self._create_schema(conn)

    def _create_schema(self, conn: Any) -> None:
        """Create the tables if missing (once per store: readers may come before the writer)."""
        if self._schema_ready:
            return
        with self._transaction(conn):
            cur = conn.cursor()
            for stmt in schema.SCHEMA.format(**self.schema_types).split(";"):
                if stmt.strip():
                    cur.execute(stmt)
        schema.upgrade(conn, self.schema_types)  # outside the transaction: a failed ALTER must not abort it
        self._schema_ready = True

    def write(self, records: Sequence[Record]) -> None:
        """Write records in one transaction; on failure the connection is dropped and re-raised."""
        self.connect()
        rows = [_decision_row(r) for r in records if isinstance(r, DecisionRecord)]
        labels = [_feedback_row(r) for r in records if isinstance(r, FeedbackRecord)]
        try:
            with self._transaction(self._conn):
                cur = self._conn.cursor()
                if rows:
                    cur.executemany(self._sql(schema.INSERT), rows)
                if labels:
                    cur.executemany(self._sql(schema.UPSERT_FEEDBACK), labels)
        except Exception:
            self.close()
            raise

    def read(self, since: float | None, version: str | None) -> list[LoggedDecision]:
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("d.created >= ?")
            args.append(since)
        if version is not None:
            where.append("d.version = ?")
            args.append(version)
        filters = (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.id"
        return [_logged(row) for row in self._query(lambda present: schema.select(present)
                                                    + filters, args)]

    def stages(self, request_id: str) -> list[StageInfo]:
        return [StageInfo(*row) for row in self._query(schema.STAGES, [request_id])]

    def _query(self, sql: str | Callable[[set[str]], str],
               args: list[Any]) -> list[tuple[Any, ...]]:
        """Run a read on a fresh connection, so readers never share the writer's; a callable
        `sql` is made from the columns the log has (looked up only then)."""
        conn = self._open()
        try:
            self._ready(conn)
            text = sql(schema.columns(conn)) if callable(sql) else sql
            cur = conn.cursor()
            cur.execute(self._sql(text), args)
            return list(cur.fetchall())
        finally:
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                self._conn.close()
            self._conn = None


class SqliteStore(SqlStore):
    """An embedded SQLite file in WAL mode, synchronous=FULL (durable at each commit)."""

    kind = "sqlite"

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        super().__init__(readonly)
        self.path = Path(path)
        # False: this writer's commits never checkpoint the WAL (SQLite runs an automatic
        # checkpoint inside the commit that crosses 1,000 pages: 2-7 ms here); checkpoint() does
        self.autocheckpoint = True

    def _open(self) -> sqlite3.Connection:
        if self.readonly:  # no WAL switch, no schema, no file created
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=5.0, check_same_thread=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if not self.autocheckpoint:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def checkpoint(self) -> None:
        """Copy the WAL into the database on a connection of its own (PASSIVE: never waits for
        the writer or readers, which go on meanwhile)."""
        conn = sqlite3.connect(self.path, timeout=5.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()


class PostgresStore(SqlStore):
    """A PostgreSQL database reached by URL through psycopg 3."""

    kind = "postgresql"
    placeholder = "%s"
    schema_types: ClassVar[dict[str, str]] = {
        "serial": "BIGSERIAL", "real": "DOUBLE PRECISION", "boolean": "BOOLEAN"}

    def __init__(self, url: str, connect_timeout_s: int = 3, readonly: bool = False) -> None:
        super().__init__(readonly)
        self.url = url
        self.connect_timeout_s = connect_timeout_s

    def _open(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout_s, autocommit=True)
        if self.readonly:  # retrain and drift: the server refuses any change (SQLite: mode=ro)
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def _transaction(self, conn: Any) -> Any:
        return conn.transaction()


def open_store(url: str, readonly: bool = False) -> Store:
    """A store for a SQLite path (or sqlite:///path) or a postgresql:// URL; `readonly` for
    readers, which must find an existing decision log and leave it as it is."""
    path = sqlite_path(url)
    if path is None:
        return PostgresStore(url, readonly=readonly)
    return SqliteStore(path, readonly=readonly)


def _decision_row(r: DecisionRecord) -> tuple[Any, ...]:
    signals = _encode(r.signals).decode()  # NaN and inf as null, like json.dumps after a filter
    return (
        r.record_id, _text(r.request_id), r.stage, r.model, signals, r.p_correct, r.threshold,
        r.decision, r.reason, r.lam, r.version, r.latency_s, r.created, _text(r.prediction),
        _text(r.response), r.endpoint, r.prompt_tokens, r.completion_tokens, r.propensity,
        r.choice_eps,
    )


def _feedback_row(r: FeedbackRecord) -> tuple[Any, ...]:
    return (_text(r.request_id), r.stage, r.correct, _text(r.gold), r.created)


def _text(s: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: stored as U+FFFD (in SQLite too, so both read alike)."""
    return s.replace("\x00", "\ufffd") if isinstance(s, str) and "\x00" in s else s


def _signals(raw: str) -> dict[str, float]:
    """A logged signal column by name. Logs written before signals were named hold an array in
    the FEATURE_NAMES order of that build: read by today's names when the widths agree, else
    kept under positional names ('#0', '#1', ...), which no build's features match."""
    value = json.loads(raw)
    if isinstance(value, dict):
        return {str(k): math.nan if v is None else float(v) for k, v in value.items()}
    names = FEATURE_NAMES if len(value) == len(FEATURE_NAMES) else \
        tuple(f"#{i}" for i in range(len(value)))
    return {n: math.nan if v is None else float(v) for n, v in zip(names, value, strict=True)}


def _logged(row: tuple[Any, ...]) -> LoggedDecision:
    signals = _signals(row[3])
    p = math.nan if row[4] is None else float(row[4])
    correct = None if row[15] is None else bool(row[15])
    values = (*row[:3], signals, p, *row[5:15], correct, row[16], *row[17:21])
    try:  # typed: a hand-edited row (a text stage) is a ValueError naming it, not a TypeError later
        return msgspec.convert(dict(zip(_LOGGED_FIELDS, values, strict=True)), LoggedDecision)
    except msgspec.ValidationError as exc:
        raise ValueError(f"a logged decision of request {row[0]!r}: {exc}") from None


_LOGGED_FIELDS = LoggedDecision.__struct_fields__
