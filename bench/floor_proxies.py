"""Two floor proxies for `bench/service.py --only proxy`: what any Python chat router on this stack
pays before it decides anything, timed in the same rounds as confroute's.

- `hop`: a raw ASGI app (uvicorn) that reads the request, POSTs one chat request with logprobs
  to the backend with aiohttp (as confroute's OpenAI backend does), reads the whole reply and
  answers a constant of the size of confroute's reply. The cost of the extra HTTP hop alone.
- `decode`: the same, and the reply read into the arrays every confidence signal needs (the
  OpenAI reply decoded with confroute's msgspec decoder, then `token_arrays`), answering with the
  reply's text. The least a router that reads the answer's logprobs can add.

Written by hand (no library is a proxy this bare): nothing here validates, routes, scores or logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from servers import drain

# about the size of confroute's chat reply for the bench trace (its text plus the router field)
_CONSTANT = json.dumps({"choices": [{"message": {"content": "x" * 2000}}]}).encode()


def floor_proxy(kind: str, panel: Path) -> Any:
    """The ASGI app of floor proxy `kind` ("hop" or "decode"), calling the panel's first model."""
    import aiohttp

    first = yaml.safe_load(panel.read_text())["models"][0]
    url = first["base_url"].rstrip("/") + "/chat/completions"
    sessions: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await drain(receive)
        if not sessions:  # aiohttp binds a session to the loop that made it
            sessions.append(aiohttp.ClientSession())
        payload = {"model": first["model"], "max_tokens": 300, "logprobs": True, "top_logprobs": 5,
                   "messages": [{"role": "user", "content": "What is 3 + 4?"}]}
        async with sessions[0].post(url, json=payload) as reply:
            raw = await reply.read()
        out = _CONSTANT if kind == "hop" else _decoded(raw)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    return app


def _decoded(raw: bytes) -> bytes:
    from confroute.backends.openai_reply import completion_from_reply
    from confroute.tokens import token_arrays

    completion = completion_from_reply(raw, "floor", 0.0)
    arrays = token_arrays(completion.tokens)
    return json.dumps({"choices": [{"message": {"content": completion.response}}],
                       "tokens": int(arrays.logprob.size)}).encode()
