"""OpenTelemetry (tracing.py) with the SDK's in-memory exporter: one span per request, one per
cascade stage with the GenAI and confroute attributes, the caller's trace context as parent and
the stage's passed on to the backend; nothing at all while off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from confroute import tracing
from confroute.service import create_app

from .conftest import PANEL, settings_for, stub_panel
from .stub_backend import StubBackend, tokens

SMALL, MEDIUM, LARGE = PANEL
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure({}, exporter=exporter)
    yield exporter
    tracing.configure({})  # off again for the other tests


def _client(tmp_path: Path, cascade_models: Path, stub: str, modes: tuple[str, str, str]) -> TestClient:
    panel = stub_panel(tmp_path / "panel.yaml", stub, modes)
    return TestClient(create_app(settings_for(tmp_path, cascade_models, panel)))


def test_a_chat_request_is_one_span_with_a_child_per_stage(
    tmp_path: Path, cascade_models: Path, stub: str, backend: StubBackend,
    spans: InMemorySpanExporter,
) -> None:
    with _client(tmp_path, cascade_models, stub, ("unsure", "ok:7", "ok:9")) as c:
        r = c.post("/v1/chat/completions", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
                   json={"model": "confroute:0.5",
                         "messages": [{"role": "user", "content": "What is 3 + 4?"}]})
        assert r.status_code == 200, r.text
    names = sorted(s.name for s in spans.get_finished_spans())
    assert names == [f"chat {MEDIUM}", f"chat {SMALL}", "confroute chat"], names
    got = {s.name: s for s in spans.get_finished_spans()}
    req = got["confroute chat"]
    assert f"{req.context.trace_id:032x}" == TRACE and f"{req.parent.span_id:016x}" == PARENT
    a: dict[str, Any] = dict(req.attributes)
    assert (a["confroute.lambda"], a["confroute.decision"], a["gen_ai.response.model"]) == (
        0.5, "accepted", MEDIUM)
    assert a["confroute.version"] == r.json()["router"]["version"]
    assert a["confroute.cost"] == r.json()["router"]["cost"] and a["confroute.models_called"] == 2
    small, medium = got[f"chat {SMALL}"], got[f"chat {MEDIUM}"]
    for stage, decision in ((small, "escalate"), (medium, "accept")):
        s = dict(stage.attributes)
        assert stage.parent.span_id == req.context.span_id
        assert s["gen_ai.request.model"] == (SMALL if stage is small else MEDIUM)
        assert s["gen_ai.usage.input_tokens"] == 10 and s["gen_ai.usage.output_tokens"] > 0
        assert s["confroute.decision"] == decision and 0 <= s["confroute.p_correct"] <= 1
        assert s["confroute.reason"] and s["confroute.cost"] > 0
    # the backend was called inside the stage's span, and was told so (W3C traceparent)
    sent = backend.headers["ok:7"]["traceparent"]
    assert sent == f"00-{TRACE}-{medium.context.span_id:016x}-01"


def test_a_route_request_is_one_span_with_its_decision(
    tmp_path: Path, cascade_models: Path, stub: str, spans: InMemorySpanExporter,
) -> None:
    with _client(tmp_path, cascade_models, stub, ("ok", "ok", "ok")) as c:
        r = c.post("/v1/route", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}, json={
            "model": SMALL, "content": tokens("The answer is : 7", -2.5),
            "cost_quality_tradeoff": 0.8})
        assert r.status_code == 200, r.text
    (span,) = [s for s in spans.get_finished_spans() if s.name == "confroute route"]
    a = dict(span.attributes)
    assert f"{span.context.trace_id:032x}" == TRACE
    assert (a["confroute.decision"], a["confroute.reason"], a["gen_ai.request.model"]) == (
        r.json()["decision"], r.json()["reason"], SMALL)
    assert a["confroute.lambda"] == 0.8 and a["confroute.request_id"] == r.json()["request_id"]


def test_off_by_default_and_by_the_standard_variables(
    tmp_path: Path, cascade_models: Path, stub: str,
) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.configure({}, exporter=exporter)
    assert not tracing.configure({}) and not tracing.on()  # no OTEL_* variable: off
    with _client(tmp_path, cascade_models, stub, ("ok", "ok", "ok")) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "confroute", "messages": [{"role": "user", "content": "What is 3 + 4?"}]})
        assert r.status_code == 200
    assert exporter.get_finished_spans() == ()  # it was on before: nothing reaches it now
    assert tracing.wanted({}) is None and tracing.wanted({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "otlp"
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) is None
    with pytest.raises(ValueError, match="otlp or console"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}) and tracing.on()
    tracing.configure({})


def test_a_malformed_trace_header_is_ignored_not_refused(
    tmp_path: Path, cascade_models: Path, stub: str, spans: InMemorySpanExporter,
) -> None:
    """W3C: a traceparent that cannot be one starts a new trace; the request is served."""
    with _client(tmp_path, cascade_models, stub, ("ok", "ok", "ok")) as c:
        for header in ("x" * 600, "00-not-a-trace-01"):
            r = c.post("/v1/chat/completions", headers={"traceparent": header}, json={
                "model": "confroute", "messages": [{"role": "user", "content": "What is 3 + 4?"}]})
            assert r.status_code == 200, r.text
    roots = [s for s in spans.get_finished_spans() if s.name == "confroute chat"]
    assert len(roots) == 2 and all(s.parent is None for s in roots)
