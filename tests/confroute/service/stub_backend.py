"""A scripted OpenAI-compatible backend for failure modes a healthy llama.cpp server will not play.

The served model name chooses the behaviour, `mode[:answer]`:
- `ok`: a confident answer (every token logprob -0.01, top-5 alternatives);
- `unsure`: the same text with logprob -2.5 per token;
- `nologprobs`: the answer without any logprobs;
- `nousage`: `ok` without the reply's `usage` (servers that do not report tokens);
- `slow`: sleeps 3 s before answering (panels give it a shorter timeout);
- `error`: HTTP 500;
- `tool`: a call of the tool `add` with arguments {"a": 3, "b": 4}, logprobs for its raw text
  (Qwen's `<tool_call>` layout) where the argument tokens are sure (-0.01) and the rest not (-4).
The answer text ends with "The answer is: <answer>" (default 42). A real backend that is down is
played by a closed loopback port, not by this stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

TEXT = "We add the numbers step by step . The answer is : {answer}"


def tokens(text: str, lp: float, k: int = 5) -> list[dict[str, Any]]:
    """The text as word tokens with `lp` and k alternatives (chosen first)."""
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return [{"token": p, "logprob": lp, "bytes": list(p.encode()),
             "top_logprobs": [{"token": p, "logprob": lp}] +
                             [{"token": f"alt{j}", "logprob": lp - 1.0 - j} for j in range(k - 1)]}
            for p in pieces]


TOOL_PIECES = [("<tool_call>", -4.0), ('\n{"name": "add", ', -4.0), ('"arguments": ', -4.0),
               ('{"a": 3', -0.01), (', "b": 4}', -0.01), ("}\n", -4.0), ("</tool_call>", -4.0)]


def tool_reply() -> dict[str, Any]:
    content = [{"token": p, "logprob": lp, "top_logprobs": [{"token": p, "logprob": lp}] + [
        {"token": f"alt{j}", "logprob": lp - 1.0 - j} for j in range(4)]} for p, lp in TOOL_PIECES]
    call = {"id": "call-1", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}
    return {"id": "stub", "object": "chat.completion", "created": 0, "model": "tool",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                 "tool_calls": [call]},
                         "logprobs": {"content": content}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(content),
                      "total_tokens": 10 + len(content)}}


def reply(mode: str, answer: str, max_tokens: int) -> dict[str, Any]:
    if mode == "tool":
        return tool_reply()
    text = TEXT.format(answer=answer)
    content = tokens(text, -0.01 if mode in ("ok", "nousage") else -2.5)[:max_tokens]
    text = "".join(t["token"] for t in content)
    logprobs = None if mode == "nologprobs" else {"content": content}
    out = {"id": "stub", "object": "chat.completion", "created": 0, "model": mode,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": len(content),
                     "total_tokens": 10 + len(content)}}
    if mode == "nousage":
        del out["usage"]
    return out


class StubBackend:
    """ASGI app answering POST /v1/chat/completions per the scripted mode; counts calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # requests received, per scripted model
        self.answered: Counter[str] = Counter()  # answers it went on to send (after any sleep)
        self.last: dict[str, Any] = {}  # the last request body, per scripted model
        self.headers: dict[str, dict[str, str]] = {}  # the last request's headers, per model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, payload = await self._answer(scope["path"], body)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            model = json.loads(body)["model"]
            self.headers[model] = {k.decode("latin-1"): v.decode("latin-1")
                                   for k, v in scope["headers"]}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if not path.endswith("/chat/completions"):
            return 200, {"object": "list", "data": []}
        req = json.loads(body)
        mode, _, answer = req["model"].partition(":")
        self.calls[req["model"]] += 1
        self.last[req["model"]] = req
        if mode == "slow":
            await asyncio.sleep(3.0)
            mode = "ok"
        self.answered[req["model"]] += 1
        if mode == "error":
            return 500, {"error": {"message": "scripted failure"}}
        return 200, reply(mode, answer or "42", int(req.get("max_tokens") or 64))
