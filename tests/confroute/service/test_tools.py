"""Tool calling through the chat endpoint: tools reach OpenAI-compatible backends, tool calls come
back, and the looper's `token_filter: tool_call_args` reads only the calls' arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from confroute.service import create_app

from .conftest import PANEL, running_service, settings_for, stub_panel
from .stub_backend import StubBackend, tool_reply

SMALL, MEDIUM, LARGE = PANEL
ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}
ASK: Any = [{"role": "user", "content": "What is 3 + 4? Use the tool."}]


def test_tools_reach_the_backend_and_tool_calls_come_back(
    tmp_path: Path, models_dir: Path, stub: str, backend: StubBackend
) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("tool", "tool", "tool"))
    with running_service(settings_for(tmp_path, models_dir, panel)) as url:
        oa = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = oa.chat.completions.create(model="confroute", messages=ASK, tools=[ADD],
                                       tool_choice="auto", parallel_tool_calls=False)
        first = backend.last["tool"]
        history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call-1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}]},
            {"role": "tool", "tool_call_id": "call-1", "content": "7"}]
        oa.chat.completions.create(model="confroute", messages=history, tools=[ADD])
        sent = backend.last["tool"]
        chunks = list(oa.chat.completions.create(model="confroute", messages=ASK, tools=[ADD],
                                                 stream=True))
    streamed = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.id, tc.function.name, tc.function.arguments) for tc in streamed] == [
        (0, "call-1", "add", '{"a": 3, "b": 4}')]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert not any(ch.choices[0].delta.content for ch in chunks if ch.choices)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == (
        "call-1", "add", '{"a": 3, "b": 4}')
    assert first["tool_choice"] == "auto" and first["tools"][0]["function"]["name"] == "add"
    assert first["parallel_tool_calls"] is False
    assert sent["messages"][1]["tool_calls"][0]["id"] == "call-1"  # the history as it was given
    assert sent["messages"][2] == {"role": "tool", "content": "7", "tool_call_id": "call-1"}
    assert sent["messages"][1]["tool_calls"][0]["function"] == {
        "name": "add", "arguments": '{"a": 3, "b": 4}'}


@pytest.mark.parametrize(("token_filter", "first"), [("all", "escalate"),
                                                     ("tool_call_args", "accept")])
def test_tool_call_args_reads_the_arguments_only(
    tmp_path: Path, models_dir: Path, stub: str, token_filter: str, first: str
) -> None:
    """The stub's call is sure of its arguments (-0.01) and unsure of the rest (-4): read whole,
    avg_logprob's score is about 0.05 < 0.5 and the call escalates; read by the filter, about 1."""
    config = tmp_path / "router.yaml"
    config.write_text("algorithm:\n  type: confidence\n  confidence:\n"
                      "    confidence_method: avg_logprob\n    threshold: 0.5\n"
                      f"    token_filter: {token_filter}\n")
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("tool", "ok:7", "ok:9"))
    settings = settings_for(tmp_path, models_dir, panel, router_config=config)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/chat/completions", json={"model": "confroute", "messages": ASK,
                                                 "tools": [ADD]})
        # /v1/route handed the same reply (a whole chat completion with its tool_calls)
        routed = c.post("/v1/route", json={**tool_reply(), "model": SMALL})
    assert r.status_code == 200, r.text
    tried = r.json()["router"]["tried"]
    assert (tried[0]["model"], tried[0]["decision"]) == (SMALL, first)
    assert routed.status_code == 200 and routed.json()["decision"] == first, routed.text


def test_what_tool_calling_refuses(tmp_path: Path, models_dir: Path, stub: str,
                                   backend: StubBackend) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("tool", "tool", "tool"),
                       **{SMALL: {"mode": "completions"}})
    before = sum(backend.calls.values())
    with TestClient(create_app(settings_for(tmp_path, models_dir, panel))) as c:
        call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
        for body, status, words in (
            ({"tools": [ADD]}, 400, f"panel models ['{SMALL}'] are not"),
            ({"tools": "add"}, 400, "tools: a non-empty list of tool objects"),
            ({"tools": {}}, 400, "tools: a non-empty list of tool objects"),
            ({"tools": []}, 400, "tools: a non-empty list of tool objects"),
            ({"tool_choice": "required"}, 400, "tool_choice: needs tools"),
            ({"tools": [ADD], "tool_choice": "sometimes"}, 400, "tool_choice: none, auto"),
            ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "mul"}}},
             400, "one of the tools"),
            ({"tools": [ADD], "parallel_tool_calls": "no"}, 400, "parallel_tool_calls"),
            ({"functions": [ADD["function"]]}, 400, "functions: the legacy function-calling"),
            ({"messages": [*ASK, {"role": "assistant", "tool_calls": "add(3, 4)"}]}, 422,
             "messages.1.tool_calls"),
            ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c1"}]}]}, 422,
             "messages.1.tool_calls.0.function"),
            ({"messages": [*ASK, {"role": "assistant", "tool_calls": [call]},
                           {"role": "tool", "content": "7"}]}, 422, "needs the tool_call_id"),
            ({"messages": [*ASK, {"role": "function", "name": "add", "content": "7"}]}, 422,
             "role 'function' is the legacy form"),
        ):
            r = c.post("/v1/chat/completions", json={"model": "confroute", "messages": ASK,
                                                     **body})
            assert r.status_code == status and words in r.json()["error"]["message"], (body,
                                                                                      r.text)
    assert sum(backend.calls.values()) == before  # nothing reached the panel


def test_deeply_nested_arguments_are_not_a_server_error(tmp_path: Path, models_dir: Path,
                                                        stub: str) -> None:
    """Arguments nested past Python's JSON decoder depth: read whole, not a 500 (and not
    quadratic: the nested keys inside a span already found are not decoded again)."""
    config = tmp_path / "router.yaml"
    config.write_text("algorithm:\n  type: confidence\n  confidence:\n"
                      "    confidence_method: avg_logprob\n    token_filter: tool_call_args\n")
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("tool", "ok:7", "ok:9"))
    body = tool_reply()
    deep = '"arguments": ' + "[" * 5000
    body["choices"][0]["logprobs"]["content"][2]["token"] = deep
    with TestClient(create_app(settings_for(tmp_path, models_dir, panel,
                                            router_config=config))) as c:
        r = c.post("/v1/route", json={**body, "model": SMALL})
    assert r.status_code == 200, r.text
