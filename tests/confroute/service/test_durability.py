"""SIGKILL under load: with the default (durable) decision log, every acknowledged decision is
on disk, in the log or the spill file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support import free_port

from confroute.traces import Trace

from .conftest import stub_panel

CLIENTS, KILL_AFTER = 16, 600


def _serve(tmp: Path, models_dir: Path, port: int, durability: str) -> subprocess.Popen[bytes]:
    panel = stub_panel(tmp / "panel.yaml", "http://127.0.0.1:9/v1")  # /v1/route calls no model
    env = {**os.environ, "CONFROUTE_LOG_DURABILITY": durability,
           "CONFROUTE_SPILL_PATH": str(tmp / "spill.jsonl"), "CONFROUTE_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "confroute.cli", "serve", "--port", str(port), "--models-dir",
           str(models_dir), "--panel", str(panel), "--decision-log", str(tmp / "decisions.db")]
    with (tmp / "serve.log").open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "confroute serve exited before it was ready"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("confroute serve not ready")


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
    proc = _serve(tmp_path, models_dir, port, "durable")
    body: dict[str, Any] = msgspec.to_builtins(traces[0])
    acked: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(c: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
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
        _ready(url, proc)
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests in flight on every client
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= KILL_AFTER, (tmp_path / "serve.log").read_text()[-2000:]
    missing = set(acked) - _logged_ids(tmp_path)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged decisions lost"
