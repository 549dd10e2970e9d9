"""Acknowledgements of the decision log: which records are settled, and the requests waiting.

Every submitted record gets the next sequence number; the writer (the thread, or an inline
commit on a loop) reports each batch it kept or lost with `done`; a request waiting on its
record's number holds a future on its own event loop, settled once that number is processed:
with an error when the batch holding it could not be kept. One wake-up per event loop per
batch, not per request; a loop committing inline settles its own waiters directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from confroute.errors import NotReady

_Waiter = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Acks:
    """Sequence numbers, the waiting requests and the ranges that were lost (thread-safe)."""

    def __init__(self, reason: Callable[[], str | None]) -> None:
        self.cond = threading.Condition()  # guards every field; writers notify on progress
        self.reason = reason  # why records are being lost (the store's last error), for the 503
        self.submitted = self.processed = 0
        self.waiters: list[_Waiter] = []
        self.lost: list[tuple[int, int]] = []  # sequence ranges whose records were not kept
        self.last_group = 0  # requests the last commit answered (is there concurrency?)

    def side_by_side(self) -> bool:
        """Requests waiting together, now or in the last group: worth a group-commit window."""
        return max(len(self.waiters), self.last_group) > 1

    def wait_on(self, seq: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future on `loop` settled once record `seq` is processed (already, when it is)."""
        fut: asyncio.Future[None] = loop.create_future()
        with self.cond:
            if self.processed >= seq:
                self._resolve(fut, seq)
            else:
                self.waiters.append((seq, loop, fut))
        return fut

    def wait_all(self, timeout: float) -> bool:
        """Block until every submitted record is processed; False after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.processed < self.submitted:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    return False
        return True

    def done(self, n: int, lost: bool = False) -> None:
        """The next `n` records were kept (or, `lost`, not): settle their waiters."""
        with self.cond:
            first = self.processed + 1
            self.processed += n
            if lost and n:
                self.lost = [*self.lost[-99:], (first, self.processed)]
            if self.waiters:
                ready: dict[asyncio.AbstractEventLoop, list[tuple[int, asyncio.Future[None]]]] = {}
                keep = []
                for seq, loop, fut in self.waiters:
                    if seq <= self.processed:
                        ready.setdefault(loop, []).append((seq, fut))
                    else:
                        keep.append((seq, loop, fut))
                self.waiters = keep
                self.last_group = sum(len(d) for d in ready.values())
                here = _running_loop()  # an inline commit's loop: settle directly
                for loop, settled in ready.items():  # one wake-up per event loop
                    if loop is here:
                        self._settle(settled)
                        continue
                    with contextlib.suppress(RuntimeError):  # that loop has closed
                        loop.call_soon_threadsafe(self._settle, settled)
            self.cond.notify_all()

    def _settle(self, settled: list[tuple[int, asyncio.Future[None]]]) -> None:
        with self.cond:
            for seq, fut in settled:
                self._resolve(fut, seq)

    def _resolve(self, fut: asyncio.Future[None], seq: int) -> None:
        """Settle one waiter (the lock held): an error when its record was not kept."""
        if fut.done():
            return
        if any(a <= seq <= b for a, b in self.lost):
            fut.set_exception(NotReady("the decision log could not keep this request's decision "
                                       f"({self.reason() or 'spill file full'}); retry",
                                       {"Retry-After": "1"}))
        else:
            fut.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # the writer thread
        return None
