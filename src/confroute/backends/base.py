"""The backend interface: chat messages in, completions with top-k logprobs out."""

from __future__ import annotations

import asyncio
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confroute.traces import Message, Token, Usage


@dataclass(frozen=True)
class GenParams:
    """Decoding settings shared by every backend."""

    max_tokens: int = 512  # answers here run 150-270 tokens; truncation is recorded, not hidden
    temperature: float = 0.0  # greedy: the reference traces are reproducible
    top_logprobs: int = 5  # alternatives per token, the k of the confidence signals
    seed: int = 0
    # OpenAI tool calling (tools, tool_choice, parallel_tool_calls), passed through as the
    # request gave them (OpenAI-compatible chat only); empty: none
    tool_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """One generated answer in the OpenAI token layout."""

    response: str
    tokens: list[Token]
    finish_reason: str
    usage: Usage
    latency_s: float
    model: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # the reply's tool calls, as the server sent them
    # False: the server sent no `usage`, so `usage` is an estimate (no prompt tokens, one
    # completion token per logprob) and the decision log records the call's tokens as unknown
    usage_reported: bool = True


class BackendError(RuntimeError):
    """A backend failed to answer (unreachable, timed out, bad reply); names the backend."""


class PromptTooLong(BackendError):
    """The request cannot fit the backend's context (prompt plus max_tokens): the caller's to fix."""


class Backend(ABC):
    """A panel model that answers chat messages with top-k logprobs."""

    name: str = "backend"
    kind: str = "abstract"

    @abstractmethod
    def complete_many(
        self, prompts: Sequence[Sequence[Message]], params: GenParams
    ) -> Iterator[tuple[int, Completion]]:
        """Answer every prompt; yield (index, completion) as each finishes, in any order."""

    async def acomplete(self, messages: Sequence[Message], params: GenParams,
                        deadline: float | None = None) -> Completion:
        """Answer one prompt without blocking the event loop (default: a worker thread).
        `deadline` (time.monotonic()): when the caller stops waiting; backends that retry keep
        their attempts within it, the others are bounded by the caller's timeout alone."""
        return await asyncio.to_thread(self._complete_one, messages, params)

    def _complete_one(self, messages: Sequence[Message], params: GenParams) -> Completion:
        return next(iter(self.complete_many([messages], params)))[1]

    def version(self) -> str | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    async def aclose(self) -> None:
        """Release resources from inside the event loop (the service's lifespan shutdown)."""
        self.close()


# Backend kind (a panel entry's `backend`) -> "module:class", imported only when used, so
# the engines' own packages (llama_cpp, vllm, aiohttp) load only for the panels that name them.
BACKENDS = {
    "llamacpp": "confroute.backends.llamacpp:LlamaCppBackend",
    "openai": "confroute.backends.openai_compat:OpenAICompatBackend",
    "vllm": "confroute.backends.vllm:VLLMBackend",
}


def make_backend(name: str, spec: dict[str, Any]) -> Backend:
    """Build a backend from a panel-config entry; the engine's module is imported only here."""
    kind = spec.get("backend", "llamacpp")
    if kind not in BACKENDS:
        raise ValueError(f"model {name!r}: unknown backend {kind!r}; use "
                         f"{', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[kind].partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls).from_spec(name, spec)
    return backend
