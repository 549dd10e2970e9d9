"""`confroute serve --workers 2`: one port, one decision log, /metrics summed over the
workers, and a new version hot-reloaded by every worker."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support import free_port, stop, wait_http_ok

from confroute.manifest import switch_current
from confroute.traces import Trace

from .conftest import build_version, serve_process

N = 60


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    # a new connection per request, so the kernel hands requests to both workers
    with httpx.Client(timeout=10, headers={"connection": "close"}) as http:
        return http.post(f"{url}/v1/route", json=body)


@pytest.mark.slow
def test_two_workers_share_one_log_sum_their_metrics_and_both_reload(
    tmp_path: Path, models_dir: Path, traces: list[Trace]
) -> None:
    port, metrics_dir = free_port(), tmp_path / "prom"
    metrics_dir.mkdir()
    proc = serve_process(tmp_path, models_dir, port, "--workers", "2",
                         PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                         CONFROUTE_RELOAD_INTERVAL_S="0.3")
    url = f"http://127.0.0.1:{port}"
    body: dict[str, Any] = msgspec.to_builtins(traces[0])
    try:
        wait_http_ok(f"{url}/healthz", proc)
        first = _post(url, body).json()["version"]
        sent = 1

        def pids() -> set[str]:  # the processes that answered: each writes its own counter file
            return {m.group(1) for f in metrics_dir.iterdir()
                    if (m := re.match(r"counter_(\d+)\.db", f.name))}

        # at least N requests, and on until both workers have answered (the kernel picks)
        while sent < N or (len(pids()) < 2 and sent < 8 * N):
            r = _post(url, {**body, "request_id": f"r{sent}"})
            assert r.status_code == 200, r.text
            sent += 1
        assert len(pids()) >= 2, sorted(p.name for p in metrics_dir.iterdir())
        text = httpx.get(f"{url}/metrics", timeout=10).text
        decided = sum(float(v) for v in re.findall(
            r'^confroute_decisions_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))
        assert decided == sent, text[:2000]  # summed over both workers, whichever answered
        with sqlite3.connect(tmp_path / "decisions.db") as conn:
            (rows,) = conn.execute("SELECT count(*) FROM decisions").fetchone()
        assert rows == sent  # durable: every acknowledged decision is in the one shared log

        new = build_version(models_dir, switch=False).name
        switch_current(models_dir, new)

        def serving() -> dict[str, str]:  # pid -> the version its own gauge says it serves
            text = httpx.get(f"{url}/metrics", timeout=10).text
            out = {}
            for labels, value in re.findall(r"^confroute_version_info\{([^}]*)\} (\S+)$", text,
                                            re.M):
                kv = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                if float(value) == 1.0:
                    out[kv["pid"]] = kv["version"]
            return out

        workers = pids()
        deadline, seen = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            seen = serving()
            if set(seen) >= workers and set(seen.values()) == {new}:
                break
            time.sleep(0.3)
        # each worker's own gauge, by pid: every worker reloaded, not just the ones that answered
        assert set(seen) >= workers and set(seen.values()) == {new} and new != first, seen
        assert {_post(url, body).json()["version"] for _ in range(12)} == {new}
    finally:
        stop(proc, 30)
