"""POST /v1/chat/completions over scripted backends: escalation, limits, failures, streaming.

Stands in for real servers only where a healthy llama.cpp server cannot play the part (slow,
erroring, logprob-less answers; see stub_backend.py). A down backend is a closed loopback port.
The real-model cascade is in test_llama.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from support import wait_for

from confroute.decisions.log import DecisionLog
from confroute.features import FEATURE_NAMES
from confroute.service import create_app

from .conftest import PANEL, free_port, running_service, settings_for, stub_panel
from .stub_backend import StubBackend

QUESTION: Any = [{"role": "user", "content": "What is 3 + 4?"}]
SMALL, MEDIUM, LARGE = PANEL


@pytest.fixture()
def make_client(tmp_path: Path, models_dir: Path, stub: str) -> Iterator[Any]:
    """make_client(modes, **per_model) -> a TestClient over a panel of scripted backends."""
    clients: list[TestClient] = []

    def make(modes: tuple[str, str, str], settings: dict[str, Any] | None = None,
             **per_model: Any) -> TestClient:
        panel = stub_panel(tmp_path / f"panel{len(clients)}.yaml", stub, modes, **per_model)
        client = TestClient(create_app(settings_for(tmp_path, models_dir, panel,
                                                    **(settings or {}))))
        clients.append(client.__enter__())
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def metric(url: str, name: str) -> float:
    """An unlabelled sample's value on a running service's /metrics (0 when absent)."""
    import httpx

    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def chat(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "confroute", "messages": QUESTION,
                                                     **body})


def tried(r: Any) -> list[tuple[str, str]]:
    return [(t["model"], t["decision"]) for t in r.json()["router"]["tried"]]


def test_escalates_until_confident(make_client: Any) -> None:
    r = chat(make_client(("unsure", "ok:7", "ok:9")))
    assert r.status_code == 200, r.text
    assert tried(r) == [(SMALL, "escalate"), (MEDIUM, "accept")]
    body = r.json()
    assert body["choices"][0]["message"]["content"].endswith("The answer is : 7")
    assert body["router"]["stopped"] == "accepted" and body["router"]["cost"] == 3.0
    assert r.headers["x-confroute-model"] == MEDIUM
    assert r.headers["x-confroute-tried"] == f"{SMALL},{MEDIUM}"


def test_lambda_from_model_name_and_body(make_client: Any) -> None:
    client = make_client(("unsure", "ok:7", "ok:9"))
    assert [m for m, _ in tried(chat(client, model="confroute:0"))] == list(PANEL)
    assert tried(chat(client, model="confroute:1")) == [(SMALL, "accept")]
    assert tried(chat(client, model="confroute:1", cost_quality_tradeoff=0.75)) == [
        (SMALL, "escalate"), (LARGE, "accept")]  # the body wins; at 0.75 the middle is skipped


def test_exploration_runs_the_next_model_without_changing_the_answer(
    make_client: Any, tmp_path: Path
) -> None:
    client = make_client(("ok:7", "ok:9", "ok"), settings={"explore_rate": 1.0})
    r = chat(client)
    assert tried(r) == [(SMALL, "accept")] and r.headers["x-confroute-model"] == SMALL
    rid = r.json()["router"]["request_id"]
    log = DecisionLog(str(tmp_path / "decisions.db"), tmp_path / "unused.jsonl")
    wait_for(lambda: len([d for d in log.read() if d.request_id == rid]) == 2)
    rows = [(d.stage, d.model, d.decision, d.prediction) for d in log.read()
            if d.request_id == rid]
    assert rows == [(0, SMALL, "accept", "7"), (1, MEDIUM, "explore", "9")]
    fb = client.post("/v1/feedback", json={"request_id": rid, "gold": "9"}).json()
    assert [x["correct"] for x in fb["labels"]] == [False, True]


def test_no_logprobs_escalates_and_the_last_model_answers(make_client: Any) -> None:
    for on_error in ("skip", "fail"):  # no logprobs is not an error: on_error does not apply
        client = make_client(("nologprobs", "unsure", "nologprobs"),
                             **{m: {"on_error": on_error} for m in PANEL})
        r = chat(client)
        assert tried(r) == [(SMALL, "escalate"), (MEDIUM, "escalate"), (LARGE, "accept")]
        first = r.json()["router"]["tried"][0]
        assert (first["reason"], first["p_correct"]) == ("no_logprobs", None)


def test_no_logprobs_accept_setting(make_client: Any) -> None:
    """`no_logprobs: accept` on a backend that refuses logprobs: its answer stands."""
    client = make_client(("nologprobs", "ok:7", "ok:9"), **{SMALL: {"no_logprobs": "accept"}})
    r = chat(client)
    assert tried(r) == [(SMALL, "accept")]
    assert r.json()["router"]["tried"][0]["reason"] == "no_logprobs_accepted"
    client = make_client(("nologprobs", "ok:7", "ok:9"), **{SMALL: {"no_logprobs": "escalate"}})
    assert tried(chat(client)) == [(SMALL, "escalate"), (MEDIUM, "accept")]


@pytest.mark.parametrize("failure", ["down", "slow", "error"])
def test_failing_backend_skip_or_fail(make_client: Any, failure: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    broken = {"timeout_s": 0.5} | ({"base_url": closed} if failure == "down" else {})
    mode = {"down": "ok", "slow": "slow", "error": "error"}[failure]
    skip = make_client((mode, "ok:7", "ok:9"), **{SMALL: broken})
    r = chat(skip)
    assert r.status_code == 200 and tried(r) == [(SMALL, "error"), (MEDIUM, "accept")]
    fail = make_client((mode, "ok:7", "ok:9"), **{SMALL: {**broken, "on_error": "fail"}})
    r = chat(fail)
    assert r.status_code == 502 and SMALL in r.json()["error"]["message"], r.text


def test_every_backend_failing_is_a_502(make_client: Any) -> None:
    r = chat(make_client(("error", "error", "error")), model="confroute:0")
    assert r.status_code == 502 and "no panel model answered" in r.json()["error"]["message"]


def test_last_model_failing_serves_the_latest_answer(make_client: Any) -> None:
    r = chat(make_client(("unsure", "unsure", "error")), model="confroute:0")
    assert tried(r)[-1] == (LARGE, "error") and r.json()["router"]["stopped"] == "fallback"
    assert r.headers["x-confroute-model"] == MEDIUM


def test_max_escalations_from_body_and_header(make_client: Any) -> None:
    client = make_client(("unsure", "unsure", "ok"))
    r = chat(client, model="confroute:0", router={"max_escalations": 1})
    assert [m for m, _ in tried(r)] == [SMALL, MEDIUM]
    assert r.json()["router"]["stopped"] == "max_escalations"
    r = client.post("/v1/chat/completions", headers={"x-confroute-max-escalations": "0"},
                    json={"model": "confroute:0", "messages": QUESTION})
    assert [m for m, _ in tried(r)] == [SMALL]


def test_deadline(make_client: Any) -> None:
    late = make_client(("unsure", "slow", "ok"))
    r = chat(late, model="confroute:0", router={"deadline_s": 1.0})
    assert r.status_code == 200 and r.json()["router"]["stopped"] == "deadline"
    assert r.headers["x-confroute-model"] == SMALL
    never = make_client(("slow", "ok", "ok"))
    r = chat(never, router={"deadline_s": 0.5})
    assert r.status_code == 504 and "deadline" in r.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "gpt-4o"}, 400, "unknown model 'gpt-4o'"),
    ({"model": "confroute:abc"}, 400, "not a number"),
    ({"model": "confroute:1.5"}, 400, "cost_quality_tradeoff must be in [0, 1]"),
    ({"cost_quality_tradeoff": -0.1}, 422, "cost_quality_tradeoff"),
    ({"n": 2}, 422, "n:"),
    ({"messages": []}, 422, "messages"),
    ({"router": {"max_escalations": -1}}, 422, "max_escalations"),
    ({"router": {"deadline": 3}}, 422, "router.deadline"),
    ({"seed": -5}, 422, "seed"),
    ({"tools": "add"}, 400, "tools: a non-empty list of tool objects"),  # more: test_tools.py
])
def test_bad_chat_requests(make_client: Any, body: dict[str, Any], status: int,
                           words: str) -> None:
    r = chat(make_client(("ok", "ok", "ok")), **body)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


def test_client_gone_cancels_the_cascade(tmp_path: Path, models_dir: Path, stub: str,
                                         backend: StubBackend) -> None:
    """A chat client that leaves while the first model is still answering: the cascade is
    cancelled (no stage logged, no later model called) and counted; one that waits is served."""
    import time

    import httpx

    panel = stub_panel(tmp_path / "panel.yaml", stub, ("slow", "ok:7", "ok:9"))
    settings = settings_for(tmp_path, models_dir, panel)
    body = {"model": "confroute:0", "messages": QUESTION}
    with running_service(settings) as url:
        later, slow = backend.calls["ok:7"] + backend.calls["ok:9"], backend.answered["slow"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5,
                       headers={"x-request-id": "gone-1"})
        wait_for(lambda: metric(url, "confroute_client_disconnects_total") == 1.0)
        # the slow call's sleep ends 3 s after it began: past it, no later model was called
        wait_for(lambda: backend.answered["slow"] > slow, timeout=10)
        time.sleep(0.5)  # a cascade that had gone on would call the next model within ms
        assert backend.calls["ok:7"] + backend.calls["ok:9"] == later
        waited = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                            headers={"x-request-id": "stayed-1"})
        assert waited.status_code == 200, waited.text
        metrics = httpx.get(url + "/metrics").text
    assert "confroute_client_disconnects_total 1.0" in metrics
    assert 'confroute_requests_total{endpoint="/v1/chat/completions",status="499"} 1.0' in metrics
    rows = DecisionLog(settings.decision_log, tmp_path / "unused.jsonl").read()
    assert {r.request_id for r in rows} == {"stayed-1"}  # the cancelled one logged nothing


def test_client_gone_after_the_first_answer_keeps_that_stage(tmp_path: Path, models_dir: Path,
                                                             stub: str,
                                                             backend: StubBackend) -> None:
    """Leaving while the second model answers: the first stage, answered and logged already,
    stays in the log; the second is cancelled (never logged, even after it would have ended)."""
    import time

    import httpx

    panel = stub_panel(tmp_path / "panel.yaml", stub, ("unsure", "slow", "ok:9"))
    settings = settings_for(tmp_path, models_dir, panel)
    with running_service(settings) as url:
        answered = backend.answered["slow"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", timeout=1.5,
                       json={"model": "confroute:0", "messages": QUESTION},
                       headers={"x-request-id": "gone-2"})
        wait_for(lambda: metric(url, "confroute_client_disconnects_total") == 1.0)
        # the slow model has sent its answer: a cascade that had gone on would score and log
        # that stage within milliseconds (the log is flushed when the service stops, below)
        wait_for(lambda: backend.answered["slow"] > answered, timeout=10)
        time.sleep(0.5)
    rows = DecisionLog(settings.decision_log, tmp_path / "unused.jsonl").read()
    assert [(r.stage, r.model, r.decision) for r in rows if r.request_id == "gone-2"] == [
        (0, SMALL, "escalate")]


def test_header_limits_are_checked(make_client: Any) -> None:
    client = make_client(("unsure", "ok:7", "ok:9"))
    for headers, words in (({"x-request-id": "r" * 201}, "header.x-request-id"),
                           ({"x-confroute-deadline-s": "0"}, "header.x-confroute-deadline-s"),
                           ({"x-confroute-max-escalations": "-1"},
                            "header.x-confroute-max-escalations")):
        r = client.post("/v1/chat/completions", headers=headers,
                        json={"model": "confroute", "messages": QUESTION})
        assert r.status_code == 422 and words in r.json()["error"]["message"], r.text


def test_chat_is_in_the_openapi_schema(make_client: Any) -> None:
    spec = make_client(("ok", "ok", "ok")).get("/openapi.json").json()
    post = spec["paths"]["/v1/chat/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatRequest")
    assert {p["name"] for p in post["parameters"]} >= {
        "x-request-id", "x-confroute-max-escalations", "x-confroute-deadline-s"}


def test_openai_client_streaming_logging_and_feedback(tmp_path: Path, models_dir: Path,
                                                      stub: str) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("unsure", "ok:7", "ok:9"))
    settings = settings_for(tmp_path, models_dir, panel)
    with running_service(settings) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="confroute", messages=QUESTION, max_tokens=16)
        resp = raw.parse()
        assert raw.headers["x-confroute-model"] == MEDIUM and resp.model == MEDIUM
        router = resp.model_extra["router"]  # type: ignore[index]
        chunks = list(client.chat.completions.create(
            model="confroute", messages=QUESTION, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == resp.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].model_extra["router"]["model"] == MEDIUM  # type: ignore[index]
        import httpx

        fb = httpx.post(url + "/v1/feedback", json={"request_id": router["request_id"],
                                                   "gold": "7"}).json()
        assert [(x["model"], x["correct"]) for x in fb["labels"]] == [(SMALL, False),
                                                                       (MEDIUM, True)]
        assert httpx.post(url + "/v1/feedback", json={"request_id": "nope",
                                                      "correct": True}).status_code == 404
        # a non-ASCII request id is UTF-8 both ways (real sockets: the TestClient re-encodes
        # headers), counted in characters, and feedback (JSON) names it; not UTF-8: a 400
        rid = "réq-日本-" + "é" * 150  # 157 characters, 310 bytes: within the 200 allowed
        ask = {"model": "confroute", "messages": QUESTION, "max_tokens": 16}
        r = httpx.post(url + "/v1/chat/completions", json=ask, headers=[
            (b"x-request-id", rid.encode())])
        assert r.status_code == 200 and dict(r.headers.raw)[b"x-request-id"] == rid.encode()
        assert r.json()["router"]["request_id"] == rid
        assert [x["correct"] for x in httpx.post(url + "/v1/feedback", json={
            "request_id": rid, "gold": "7"}).json()["labels"]] == [False, True]
        r = httpx.post(url + "/v1/chat/completions", json=ask, headers=[
            (b"x-request-id", b"r\xe9q")])
        assert r.status_code == 400 and "x-request-id: not valid UTF-8" in r.text
    rows = DecisionLog(settings.decision_log, tmp_path / "unused.jsonl").read()
    mine = [r for r in rows if r.request_id == router["request_id"]]
    assert [(r.stage, r.model, r.decision, r.correct, r.endpoint) for r in mine] == [
        (0, SMALL, "escalate", False, "chat"), (1, MEDIUM, "accept", True, "chat")]
    assert mine[1].prediction == "7" and mine[0].signals[FEATURE_NAMES[0]] == 1.0


def test_what_the_edge_checks_before_the_panel(make_client: Any, backend: StubBackend) -> None:
    """Content type, encoding, repeated headers, header and body errors in one 422, non-text
    parts: each a 4xx naming it, nothing sent to the panel."""
    client = make_client(("ok", "ok:7", "ok:9"))
    real = client.post

    def post(*args: Any, **kwargs: Any) -> Any:  # a refused request reaches no backend
        before = sum(backend.calls.values())
        r = real(*args, **kwargs)
        if r.status_code >= 400:
            assert sum(backend.calls.values()) == before, r.text
        return r

    client.post = post  # type: ignore[method-assign]
    good = json.dumps({"model": "confroute", "messages": QUESTION}).encode()
    r = client.post("/v1/chat/completions", content=good, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "send application/json" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", content=b"\xef\xbb\xbf" + good,
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text  # a UTF-8 byte-order mark is dropped
    r = client.post("/v1/chat/completions", content=good.replace(b"3 + 4", b"3 \xff 4"),
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "the body is not valid UTF-8"
    r = client.post("/v1/chat/completions", content=good, headers=[
        ("content-type", "application/json"), ("x-request-id", "first"),
        ("x-request-id", "second")])
    assert r.status_code == 200 and r.headers["x-request-id"] == "first"
    r = client.post("/v1/chat/completions", headers={"x-confroute-deadline-s": "abc"},
                    json={"model": "confroute", "messages": QUESTION, "max_tokens": 0})
    words = r.json()["error"]["message"]
    assert r.status_code == 422 and "header.x-confroute-deadline-s" in words
    assert "max_tokens" in words
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    r = client.post("/v1/chat/completions", json={"model": "confroute", "messages": image})
    assert r.status_code == 400 and "part type 'image_url' is not supported" in r.text
    r = client.post("/v1/chat/completions",
                    json={"model": "confroute", "messages": [{"role": "user", "content": " "}]})
    assert r.status_code == 400 and "messages hold no text" in r.text
