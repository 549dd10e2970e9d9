"""The running service: hot reload, API keys, health and metrics, 200 concurrent requests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from support import wait_for

from confroute.decisions.log import DecisionLog
from confroute.manifest import MANIFEST, switch_current
from confroute.service import create_app
from confroute.settings import Settings
from confroute.traces import Trace

from .conftest import PANEL, running_service, settings_for, write_panel


def clone_version(src: Path, models_dir: Path, name: str) -> Path:
    """A copy of a version under a new name (a valid, distinct version)."""
    dst = models_dir / name
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**manifest, "version": name}))
    return dst


def _replace_file(version: Path, name: str, data: bytes) -> None:
    """Rewrite a version file and its manifest hash (a consistent but broken version)."""
    (version / name).write_bytes(data)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (version / MANIFEST).write_text(json.dumps(manifest))


def _client(tmp_path: Path, models_dir: Path, **kw: Any) -> TestClient:
    panel = write_panel(tmp_path / "panel.yaml", [{"name": m} for m in PANEL])
    return TestClient(create_app(settings_for(tmp_path, models_dir, panel, **kw)))


def _route(client: TestClient, t: Trace, **headers: str) -> Any:
    return client.post("/v1/route", content=msgspec.json.encode(t), headers=headers)


def test_hot_reload_swaps_good_versions_and_refuses_bad_ones(
    tmp_path: Path, models_dir: Path, traces: list[Trace]
) -> None:
    first = (models_dir / "current").resolve()
    with _client(tmp_path, models_dir) as client:
        assert client.get("/healthz").json()["version"] == first.name
        stop, failures, served = threading.Event(), [], Counter()

        def hammer() -> None:  # requests keep flowing during every swap
            while not stop.is_set():
                try:
                    r = _route(client, traces[0])
                except Exception as exc:  # a server error re-raised by TestClient counts too
                    failures.append(repr(exc))
                    return
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    served[r.json()["version"]] += 1

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            wait_for(lambda: served[first.name] > 0 or bool(failures))
            clone_version(first, models_dir, "v-second")
            switch_current(models_dir, "v-second")
            wait_for(lambda: client.get("/healthz").json()["version"] == "v-second")
            wait_for(lambda: served["v-second"] > 0 or bool(failures))
            bad = clone_version(first, models_dir, "v-tampered")
            onnx = next(bad.glob("*.onnx"))
            onnx.write_bytes(onnx.read_bytes()[:-8] + b"tampered")
            switch_current(models_dir, "v-tampered")
            wait_for(lambda: client.get("/healthz").json()["reload_error"] is not None)
            after_refusal = served["v-second"]
            wait_for(lambda: served["v-second"] > after_refusal or bool(failures))
        finally:
            stop.set()
            worker.join()
        assert not failures, failures[:3]
        assert served[first.name] > 0 and served["v-second"] > after_refusal
        assert set(served) == {first.name, "v-second"}  # the tampered version never served
        health = client.get("/healthz").json()
        assert health["version"] == "v-second" and health["ready"]
        assert "was modified" in health["reload_error"]
        r = client.post("/admin/reload")
        assert r.status_code == 409 and "still serving v-second" in r.json()["error"]["message"]
        assert _route(client, traces[0]).json()["version"] == "v-second"
        garbage = clone_version(first, models_dir, "v-garbage")  # hashes match, ONNX does not
        _replace_file(garbage, next(garbage.glob("*.onnx")).name, b"not an onnx graph")
        switch_current(models_dir, "v-garbage")
        wait_for(lambda: "v-garbage" in (client.get("/healthz").json()["reload_error"] or ""))
        switch_current(models_dir, first.name)  # the watcher survived the bad version
        wait_for(lambda: client.get("/healthz").json()["version"] == first.name)
        assert client.post("/admin/reload").json() == {
            "version": first.name, "previous": first.name, "changed": False}
        assert 'confroute_reloads_total{result="refused"} 1.0' in client.get("/metrics").text


def test_api_keys(tmp_path: Path, models_dir: Path, traces: list[Trace]) -> None:
    with _client(tmp_path, models_dir, api_keys="k1, k2") as client:
        fb = {"request_id": "nope", "correct": True}
        assert client.post("/v1/feedback", json=fb).status_code == 401
        bad = {"Authorization": "Bearer k3"}
        assert client.post("/v1/feedback", json=fb, headers=bad).status_code == 401
        assert client.post("/v1/feedback", json=fb,
                           headers={"Authorization": "Bearer k2"}).status_code == 404
        assert client.post("/admin/reload").status_code == 401
        assert _route(client, traces[0]).status_code == 200  # route is open by default
        assert client.get("/healthz").status_code == 200
    with _client(tmp_path, models_dir, api_keys="k1", require_key_for_all=True) as client:
        assert _route(client, traces[0]).status_code == 401
        assert _route(client, traces[0], Authorization="Bearer k1").status_code == 200
    with pytest.raises(ValidationError, match="key 2 of 2 has a character outside printable"):
        Settings(api_keys="k1,ké")  # could never be presented as a bearer token: refused at start
    with pytest.raises(ValidationError, match="key 1 of 1"):
        Settings(api_keys=["k 1"])


def test_feedback_takes_json_and_says_so(tmp_path: Path, models_dir: Path,
                                         traces: list[Trace]) -> None:
    """As chat and route: no Content-Type is read as JSON; a form or text body is a 415 naming
    the type (it was FastAPI's "Input should be a valid dictionary" 422), and labels nothing."""
    with _client(tmp_path, models_dir) as client:
        assert _route(client, traces[0], **{"x-request-id": "fb-1"}).status_code == 200
        raw = json.dumps({"request_id": "fb-1", "correct": True}).encode()
        for kind in ("text/plain", "application/x-www-form-urlencoded"):
            r = client.post("/v1/feedback", content=raw, headers={"content-type": kind})
            assert r.status_code == 415 and f"Content-Type '{kind}': send application/json" in (
                r.json()["error"]["message"]), r.text
        assert _correct(tmp_path) == [None]
        r = client.post("/v1/feedback", content=raw)  # no header
        assert r.status_code == 200 and r.json()["labels"][0]["correct"] is True, r.text
        r = client.post("/v1/feedback", content=b"{not json", headers={
            "content-type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.text, r.text
    assert _correct(tmp_path) == [True]


def _correct(tmp_path: Path) -> list[bool | None]:
    return [r.correct for r in DecisionLog(str(tmp_path / "decisions.db"),
                                           tmp_path / "unused.jsonl").read()]


def test_health_and_metrics_report_a_down_log(tmp_path: Path, models_dir: Path,
                                              traces: list[Trace]) -> None:
    blocker = tmp_path / "nodir"
    blocker.write_text("not a directory")
    with _client(tmp_path, models_dir, decision_log=str(blocker / "d.db")) as client:
        assert _route(client, traces[0]).status_code == 200  # the request does not fail
        wait_for(lambda: client.get("/healthz").json()["decision_log"]["spilled"] == 1)
        log = client.get("/healthz").json()["decision_log"]
        assert log["up"] is False and log["last_error"]
        text = client.get("/metrics").text
        assert "confroute_decision_log_up 0.0" in text
        assert "confroute_decision_log_buffered 1.0" in text
        assert 'confroute_decisions_total{decision="accept",model="smollm2-135m"}' in text


def test_200_concurrent_requests_are_all_logged(tmp_path: Path, models_dir: Path,
                                                traces: list[Trace]) -> None:
    panel = write_panel(tmp_path / "panel.yaml", [{"name": m} for m in PANEL])
    settings = settings_for(tmp_path, models_dir, panel)
    bodies = [msgspec.json.encode(traces[i % len(traces)]) for i in range(200)]

    async def burst(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/route", content=b, headers={
                "x-request-id": f"burst-{i}"}) for i, b in enumerate(bodies)))
        return [r.status_code for r in rs]

    with running_service(settings) as url:
        statuses = asyncio.run(burst(url))
        # an x-request-id that is not UTF-8 (real sockets: the TestClient re-encodes headers)
        r = httpx.post(url + "/v1/route", content=bodies[0], headers=[(b"x-request-id", b"r\xe9q")])
        assert r.status_code == 400 and "x-request-id: not valid UTF-8" in r.text  # and no record
    assert statuses == [200] * 200
    rows = DecisionLog(settings.decision_log, tmp_path / "unused.jsonl").read()
    assert sorted(r.request_id for r in rows) == sorted(f"burst-{i}" for i in range(200))
    # each row carries the tokens its request's `usage` reported
    usage = {f"burst-{i}": traces[i % len(traces)].usage for i in range(200)}
    assert all((r.prompt_tokens, r.completion_tokens)
               == (usage[r.request_id].prompt_tokens, usage[r.request_id].completion_tokens)
               for r in rows)
    assert any(r.prompt_tokens for r in rows)


def test_route_logs_the_usage_given_and_unknown_without(tmp_path: Path, models_dir: Path,
                                                       traces: list[Trace]) -> None:
    """/v1/route logs the request's `usage`, up to the largest count it accepts; without one
    the call's tokens are logged as unknown (the traffic report counts such rows)."""
    t = msgspec.to_builtins(traces[0])
    bodies = {"none": {k: v for k, v in t.items() if k != "usage"},
              "max": {**t, "usage": {"prompt_tokens": 2**31 - 1, "completion_tokens": 0}}}
    with _client(tmp_path, models_dir) as client:
        for rid, body in bodies.items():
            r = client.post("/v1/route", json=body, headers={"x-request-id": rid})
            assert r.status_code == 200, r.text
    rows = DecisionLog(str(tmp_path / "decisions.db"), tmp_path / "unused.jsonl").read()
    assert sorted((r.request_id, r.prompt_tokens, r.completion_tokens) for r in rows) == [
        ("max", 2**31 - 1, 0), ("none", None, None)]


@pytest.mark.parametrize("path", ["/v1/models", "/healthz", "/openapi.json"])
def test_discovery_endpoints(tmp_path: Path, models_dir: Path, path: str) -> None:
    with _client(tmp_path, models_dir) as client:
        r = client.get(path)
        assert r.status_code == 200
        if path == "/v1/models":
            assert r.json()["data"][0]["id"] == "confroute"
        if path == "/openapi.json":
            spec = r.json()
            assert "RouteRequest" in spec["components"]["schemas"]
            assert "Token" in spec["components"]["schemas"]


@pytest.mark.parametrize(("kw", "inline"), [
    ({}, True),  # the default: one worker, durable SQLite
    ({"log_inline_commit": False}, False),
    ({"log_durability": "fast"}, False),
    ({"decision_log": "postgresql://u@127.0.0.1:1/none"}, False),
])
def test_the_event_loop_commits_the_durable_log_only_where_it_should(
        tmp_path: Path, models_dir: Path, kw: dict[str, Any], inline: bool) -> None:
    """Inline commits (the loop writes the group) for one durable SQLite worker unless turned off
    with CONFROUTE_LOG_INLINE_COMMIT=false; fast mode and PostgreSQL keep the writer thread."""
    with _client(tmp_path, models_dir, **kw) as client:
        log = client.app.state.resources.log  # type: ignore[attr-defined]
        assert log.inline is inline
