"""Conversations that keep their model: a chat request carrying a conversation key (the OpenAI
`user` field, or an `x-confroute-session` header) never starts below the model that answered the
previous turn of that conversation, within a TTL. Judged alone, a follow-up turn ("now commit
it") looks easy and would drop to the smallest model: the most visible routing failure in chat.

Two stores behind one interface: in-process (an LRU capped in size, for one process) and
PostgreSQL (one table, for several instances or workers; `CONFROUTE_SESSION_STORE`). A store
that cannot be reached never fails a request: the turn is routed as if it had no history, and
the failure is counted and logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger("confroute.service")
TABLE = "confroute_sessions"


class Sessions(Protocol):
    """The model that answered a conversation's last turn, by conversation key."""

    ttl_s: float

    async def last(self, key: str) -> str | None:
        """The model that answered the conversation's previous turn, if within the TTL."""

    async def answered(self, key: str, model: str) -> None:
        """Remember that `model` answered this turn of the conversation."""


class MemorySessions:
    """In one process: the most recent `max_size` conversations (least recently used dropped).
    A hand-written LRU: functools.lru_cache memoises calls and cannot be written to, and the
    entries need their own time for the TTL."""

    def __init__(self, ttl_s: float, max_size: int) -> None:
        self.ttl_s, self.max_size = ttl_s, max_size
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def last(self, key: str) -> str | None:
        hit = self._items.get(key)
        if hit is None or time.time() - hit[1] > self.ttl_s:
            return None
        self._items.move_to_end(key)
        return hit[0]

    async def answered(self, key: str, model: str) -> None:
        self._items[key] = (model, time.time())
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class PostgresSessions:
    """One table shared by every instance: (key, model, updated). Each call runs on a worker
    thread (psycopg's blocking API; one connection, reopened after a failure); expired rows are
    deleted now and then by whoever writes."""

    def __init__(self, url: str, ttl_s: float, connect_timeout_s: int = 3) -> None:
        self.url, self.ttl_s, self.connect_timeout_s = url, ttl_s, connect_timeout_s
        self._conn: Any = None
        self._lock = threading.Lock()
        self._writes = 0
        self.failures = 0

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True,
                                                 connect_timeout=self.connect_timeout_s)
                    self._conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, "
                                       "model TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL)")
                cur = self._conn.execute(sql, args)
                return cur.fetchall() if cur.description else []
            except psycopg.Error:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise

    async def last(self, key: str) -> str | None:
        rows = await self._call(f"SELECT model FROM {TABLE} WHERE key = %s AND updated >= %s",
                                (key, time.time() - self.ttl_s))
        return str(rows[0][0]) if rows else None

    async def answered(self, key: str, model: str) -> None:
        now = time.time()
        await self._call(f"INSERT INTO {TABLE} (key, model, updated) VALUES (%s, %s, %s) "
                         "ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model, "
                         "updated = EXCLUDED.updated", (key, model, now))
        self._writes += 1
        if self._writes % 1000 == 0:
            await self._call(f"DELETE FROM {TABLE} WHERE updated < %s", (now - self.ttl_s,))

    async def _call(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The query on a worker thread; [] (and a count, logged once per outage) when the
        database cannot answer: a conversation's memory is never worth failing its request."""
        import psycopg

        try:
            rows = await asyncio.to_thread(self._run, sql, args)
        except psycopg.Error as exc:
            if self.failures == 0:
                log.warning("session store %s unavailable (%s); turns route without history",
                            self.url.split("@")[-1], exc)
            self.failures += 1
            return []
        if self.failures:
            log.info("session store back after %d failed calls", self.failures)
            self.failures = 0
        return rows


def open_sessions(url: str, ttl_s: float, max_size: int) -> Sessions | None:
    """The configured store: None when the TTL is 0 (off), PostgreSQL for a postgresql:// URL,
    else in-process."""
    if ttl_s <= 0:
        return None
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSessions(url, ttl_s)
    if url not in ("", "memory"):
        raise ValueError(f"session_store: {url!r} is neither 'memory' nor a postgresql:// URL")
    return MemorySessions(ttl_s, max_size)
