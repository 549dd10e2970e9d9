"""SIGKILL under load: with the default (durable) decision log, every acknowledged decision is
on disk, in the log or the spill file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support import free_port, stop, wait_http_ok

from confroute.traces import Trace

from .conftest import serve_process

CLIENTS, KILL_AFTER = 16, 600


def _logged_ids(tmp: Path) -> set[str]:
    ids: set[str] = set()
    if (tmp / "decisions.db").exists():
        with sqlite3.connect(tmp / "decisions.db") as conn:
            ids |= {r[0] for r in conn.execute("SELECT request_id FROM decisions")}
    spill = tmp / "spill.jsonl"
    if spill.exists():
        for line in spill.read_bytes().splitlines():
            with contextlib.suppress(ValueError, KeyError):  # a torn line was never acknowledged
                ids.add(json.loads(line)["request_id"])
    return ids


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_decision(
    tmp_path: Path, models_dir: Path, traces: list[Trace]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve_process(tmp_path, models_dir, port, CONFROUTE_LOG_DURABILITY="durable")
    body: dict[str, Any] = msgspec.to_builtins(traces[0])
    acked: list[str] = []
    lock, halt = threading.Lock(), threading.Event()

    def client(c: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not halt.is_set():
                rid = f"c{c}-{i}"
                i += 1
                try:
                    r = http.post(f"{url}/v1/route", json={**body, "request_id": rid})
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        acked.append(rid)

    try:
        wait_http_ok(f"{url}/healthz", proc)
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests in flight on every client
        proc.wait(10)
        halt.set()
        for t in threads:
            t.join(15)
    finally:
        stop(proc)
    assert len(acked) >= KILL_AFTER, (tmp_path / "serve.log").read_text()[-2000:]
    missing = set(acked) - _logged_ids(tmp_path)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged decisions lost"
