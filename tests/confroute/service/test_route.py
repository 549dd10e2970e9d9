"""POST /v1/route: every token layout, the decision itself, batches, and every bad input as a 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from confroute.features import FEATURE_NAMES, extract_signals
from confroute.scoring import Scorer
from confroute.service import create_app
from confroute.traces import Trace

from .conftest import PANEL, settings_for, write_panel


def _trace_body(t: Trace, **extra: Any) -> dict[str, Any]:
    """A trace line as posted by a client (the trace layout is accepted as it is)."""
    return {**msgspec.to_builtins(t), **extra}


def _completion(t: Trace) -> dict[str, Any]:
    """The trace as the chat completion response an OpenAI-compatible server returns."""
    content = [{**msgspec.to_builtins(x), "bytes": list(x.token.encode())} for x in t.tokens]
    return {"id": "c1", "object": "chat.completion", "model": t.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t.response},
                         "logprobs": {"content": content}, "finish_reason": t.finish_reason}],
            "usage": msgspec.to_builtins(t.usage)}


@pytest.fixture(scope="module")
def client(module_dir: Path, module_models: Path) -> Iterator[TestClient]:
    panel = write_panel(module_dir / "panel.yaml", [{"name": m} for m in PANEL])
    settings = settings_for(module_dir, module_models, panel, max_body_bytes=2**20, max_batch=50)
    with TestClient(create_app(settings)) as c:
        yield c


def test_decision_is_the_scorer_and_policy_on_the_trace(
    client: TestClient, traces: list[Trace], module_models: Path
) -> None:
    scorer = Scorer.load(module_models / "current")
    for t in traces:
        got = client.post("/v1/route", json=_trace_body(t, cost_quality_tradeoff=0.5)).json()
        want = float(scorer.predict(t.model, extract_signals(t)[None])[0])
        assert got["p_correct"] == pytest.approx(want, abs=1e-9)
        assert got["decision"] == ("accept" if want >= 0.5 or t.model == PANEL[2] else "escalate")
        assert got["prediction"] == t.prediction
        assert got["version"] == scorer.version


def test_every_layout_gives_the_same_answer(client: TestClient, traces: list[Trace]) -> None:
    t = traces[1]
    comp = _completion(t)
    content = comp["choices"][0]["logprobs"]["content"]
    bodies = [
        {**comp, "model": t.model},  # the server's response posted unchanged
        {"model": t.model, "logprobs": {"content": content}, "response": t.response,
         "usage": comp["usage"]},
        {"model": t.model, "content": content, "usage": comp["usage"]},
        {"model": t.model, "compact": {"logprob": [x.logprob for x in t.tokens],
                                       "top_logprobs": [[a.logprob for a in x.top_logprobs]
                                                        for x in t.tokens],
                                       "tokens": [x.token for x in t.tokens]},
         "usage": comp["usage"]},
    ]
    ps = [client.post("/v1/route", json=b).json()["p_correct"] for b in bodies]
    assert ps == pytest.approx([ps[0]] * len(ps), abs=1e-12)


def test_lambda_changes_the_cascade(client: TestClient, traces: list[Trace]) -> None:
    small, medium = traces[0], traces[1]  # smollm2-135m, qwen2.5-coder-0.5b
    quality = client.post("/v1/route", json=_trace_body(small, cost_quality_tradeoff=0.0)).json()
    assert (quality["decision"], quality["next_model"]) == ("escalate", PANEL[1])
    cheap = client.post("/v1/route", json=_trace_body(small, cost_quality_tradeoff=1.0)).json()
    assert (cheap["decision"], cheap["reason"], cheap["threshold"]) == ("accept", "last_model", None)
    skip = client.post("/v1/route", json=_trace_body(medium, cost_quality_tradeoff=0.75)).json()
    assert (skip["decision"], skip["next_model"]) == ("skip", PANEL[2])


def test_previous_answers_set_agree_prev_and_stage(client: TestClient, traces: list[Trace]) -> None:
    t = traces[1]  # predicts 7
    agree = client.post("/v1/route", json=_trace_body(
        t, previous=["The answer is: 7"], return_signals=True, request_id="q1")).json()
    differ = client.post("/v1/route", json=_trace_body(
        t, previous=["12", None], return_signals=True)).json()
    assert agree["signals"]["agree_prev"] == 1.0 and differ["signals"]["agree_prev"] == 0.0
    assert (agree["stage"], differ["stage"], agree["request_id"]) == (1, 2, "q1")
    assert list(agree["signals"]) == list(FEATURE_NAMES)


def test_batch_forms(client: TestClient, traces: list[Trace]) -> None:
    bodies = [_trace_body(t) for t in traces]
    singles = [client.post("/v1/route", json=b).json()["p_correct"] for b in bodies]
    listed = client.post("/v1/route", json=bodies).json()
    batch = client.post("/v1/route/batch", json={"items": bodies}).json()["results"]
    assert [r["p_correct"] for r in listed] == pytest.approx(singles, abs=1e-6)  # float32 ONNX
    assert [r["p_correct"] for r in batch] == pytest.approx(singles, abs=1e-6)
    assert [r["model"] for r in batch] == [t.model for t in traces]


def _bad_bodies(t: Trace) -> list[tuple[Any, int, str]]:
    ok = _trace_body(t)
    pos = json.loads(json.dumps(ok))
    pos["tokens"][3]["logprob"] = 0.7
    return [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "malformed JSON"),
        (b"3", 400, "invalid value: "),
        ({**ok, "model": "gpt-5"}, 400, "unknown model 'gpt-5'"),
        ({**ok, "tokens": []}, 400, "empty"),
        ({**ok, "tokens": [{"token": "x", "logprob": "high"}]}, 400, "invalid value at $.tokens[0].logprob"),
        ({**ok, "cost_quality_tradeoff": 1.5}, 400, "invalid value at $.cost_quality_tradeoff"),
        ({**ok, "cost_quality_tradeoff": "cheap"}, 400,
         "invalid value at $.cost_quality_tradeoff"),
        ({**ok, "content": ok["tokens"]}, 400, "exactly one of"),
        ({"model": t.model}, 400, "exactly one of"),
        ({"model": t.model, "choices": [{"logprobs": None}]}, 400, "no logprobs"),
        ({"model": t.model, "choices": []}, 400, "`choices` is empty"),
        (pos, 400, "must be <= 0"),
        # a positive alternative beside a missing one (-99999: masked): was a 500 (all-NaN row)
        ({"model": t.model, "tokens": [{"token": "7", "logprob": -0.1, "top_logprobs": [
            {"token": "7", "logprob": 0.5}, {"token": "x", "logprob": -99999}]}]}, 400,
         "top_logprobs must be <= 0 (log-probabilities); token 0 has 0.5"),
        ({"model": t.model, "compact": {"logprob": [-0.1, -0.2],
                                        "top_logprobs": [[0.5, -99999], [-0.2, -1]]}}, 400,
         "token 0 has 0.5"),  # the token it is in, not the row with the largest finite maximum
        # at most 20 alternatives (OpenAI's limit): a ragged body cannot pad to gigabytes
        ({"model": t.model, "compact": {"logprob": [-1.0] * 3,
                                        "top_logprobs": [[-1.0] * 21, [], []]}}, 400,
         "invalid value at $.compact.top_logprobs[0]"),
        ({"model": t.model, "tokens": [{"token": "x", "logprob": -1.0, "top_logprobs": [
            {"token": "x", "logprob": -1.0}] * 21}]}, 400, "invalid value at $.tokens[0].top_logprobs"),
        ({"model": t.model, "compact": {"logprob": [-1.0, -2.0], "top_logprobs": [[-1.0]]}},
         400, "rows for 2 tokens"),
        ({"model": t.model, "compact": {"logprob": []}}, 400, "empty"),
        ({**ok, "tokens": [{"token": "x", "logprob": float("-inf")}]}, 400, "malformed JSON"),
        (b'{"model": "smollm2-135m", "content": [{"token": "x", "logprob": -1e999}]}', 400,
         "number out of range at $.content[0].logprob"),
        (b'{"model": "smollm2-135m\xc3", "content": []}', 400, "the body is not valid UTF-8"),
        ({**ok, "stage": 2**63}, 400, "invalid value at $.stage"),  # beyond any store's integers
        ({**ok, "stage": 1001}, 400, "invalid value at $.stage"),
        # token counts go to INTEGER columns (PostgreSQL's 32-bit): beyond them, or negative
        ({**ok, "usage": {"prompt_tokens": 2**64 - 1}}, 400, "invalid value at $.usage.prompt_tokens"),
        ({**ok, "usage": {"completion_tokens": 2**31}}, 400,
         "invalid value at $.usage.completion_tokens"),
        ({**ok, "usage": {"prompt_tokens": -5}}, 400, "invalid value at $.usage.prompt_tokens"),
        ({**ok, "request_id": "a\u0000b"}, 400, "invalid value at $.request_id"),  # no NUL in PG
        ({**ok, "request_id": "x" * 201}, 400, "invalid value at $.request_id"),  # too long to name
        ([], 400, "1 to 50 items"),
        ([ok] * 51, 400, "1 to 50 items"),
        ([ok] * 200, 413, "exceeds the limit of 1048576 bytes"),
    ]


def test_bad_input_is_a_4xx_that_says_what(client: TestClient, traces: list[Trace]) -> None:
    for body, status, words in _bad_bodies(traces[0]):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post("/v1/route", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (body if len(raw) < 300 else raw[:200], r.text)
        assert words in r.json()["error"]["message"], r.text


def test_route_headers_and_methods(client: TestClient, traces: list[Trace]) -> None:
    body = _trace_body(traces[0])
    r = client.post("/v1/route", json=body, headers={"x-request-id": "r" * 201})
    assert r.status_code == 400 and "at most 200" in r.json()["error"]["message"]
    r = client.post("/v1/route", json=body, headers={"x-request-id": "r" * 200})
    assert r.status_code == 200 and r.json()["request_id"] == "r" * 200
    # UTF-8, counted in characters (as feedback's JSON request_id is), not latin-1 bytes
    r = client.post("/v1/route", json=body, headers={"x-request-id": ("é" * 200).encode()})
    assert r.status_code == 200 and r.json()["request_id"] == "é" * 200, r.text
    r = client.post("/v1/route", json=body, headers={"x-request-id": ("é" * 201).encode()})
    assert r.status_code == 400 and "at most 200 characters, got 201" in r.text
    for method in ("GET", "PUT", "DELETE"):
        r = client.request(method, "/v1/route/batch" if method == "PUT" else "/v1/route")
        assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
        assert "takes POST only" in r.json()["error"]["message"]
    # JSON only, as chat: a cross-site form or text/plain POST writes no decision record
    raw = json.dumps(body).encode()
    for path in ("/v1/route", "/v1/route/batch"):
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
            r = client.post(path, content=raw, headers={"content-type": kind})
            assert r.status_code == 415 and "send application/json" in r.text, (path, kind)
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/v1/route", content=raw, headers={"content-type": kind}).status_code == 200
    assert client.post("/v1/route", content=raw).status_code == 200  # no header: taken as JSON


def test_too_many_items_and_chunked_bodies(client: TestClient, traces: list[Trace]) -> None:
    small = _trace_body(traces[0])
    r = client.post("/v1/route/batch", json={"items": [small] * 51})
    assert r.status_code == 400 and "1 to 50 items" in r.text
    chunks = iter([json.dumps([small] * 200).encode()])  # no content-length: counted as it comes
    r = client.post("/v1/route", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_not_ready_without_a_version(tmp_path: Path, traces: list[Trace]) -> None:
    panel = write_panel(tmp_path / "panel.yaml", [{"name": m} for m in PANEL])
    with TestClient(create_app(settings_for(tmp_path, tmp_path / "empty", panel))) as c:
        assert c.get("/healthz").status_code == 503
        r = c.post("/v1/route", json=_trace_body(traces[0]))
        assert r.status_code == 503 and "no verified model version" in r.json()["error"]["message"]
