"""An OpenAI-compatible server's reply, chat or completions layout, as a Completion.

Decoded with msgspec straight into the trace token layout (unknown keys such as `bytes`, `id`,
`created` are ignored); the legacy completions layout (`tokens/token_logprobs/top_logprobs`) is
converted. A malformed reply (a tool call without its function, a missing `choices`) is a
msgspec error, which the backend turns into a BackendError naming the server.
"""

from __future__ import annotations

import msgspec

from confroute.backends.base import Completion
from confroute.traces import Token, TopLogprob, Usage


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function
    type: str = "function"


class _ChatMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None  # a malformed call fails the reply (BackendError)


class _Logprobs(msgspec.Struct):
    """Both layouts: chat `content`, or legacy `tokens/token_logprobs/top_logprobs`."""

    content: list[Token] | None = None
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] | None = None


class _Choice(msgspec.Struct):
    message: _ChatMessage | None = None  # chat
    text: str = ""  # completions
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Reply(msgspec.Struct):
    choices: list[_Choice]
    usage: Usage | None = None


_DECODER = msgspec.json.Decoder(_Reply)  # built once: ~5% of a 100 KB reply's decode


def completion_from_reply(body: bytes, model: str, latency_s: float) -> Completion:
    """A chat or completions reply body as a Completion; no logprobs gives tokens=[]."""
    reply = _DECODER.decode(body)
    choice = reply.choices[0]
    tokens = _tokens(choice.logprobs)
    return Completion(
        response=(choice.message.content or "") if choice.message else choice.text,
        tokens=tokens,
        finish_reason=choice.finish_reason or "unknown",
        usage=reply.usage or Usage(0, len(tokens)),
        usage_reported=reply.usage is not None,
        latency_s=round(latency_s, 3),
        model=model,
        tool_calls=msgspec.to_builtins(choice.message.tool_calls)
        if choice.message and choice.message.tool_calls else None,
    )


def _tokens(lp: _Logprobs | None) -> list[Token]:
    if lp is None:
        return []
    return lp.content if lp.content is not None else legacy_tokens(lp)


def legacy_tokens(lp: _Logprobs) -> list[Token]:
    """Legacy `tokens/token_logprobs/top_logprobs` as Tokens, alternatives sorted best first."""
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    out = []
    for text, logprob, top in zip(lp.tokens, lp.token_logprobs, tops, strict=False):
        if logprob is None:
            continue  # an echoed first prompt token has no logprob
        alts = sorted((top or {}).items(), key=lambda kv: -kv[1])
        out.append(Token(text, logprob, [TopLogprob(t, v) for t, v in alts]))
    return out
