"""Offline vLLM backend (GPU): `vllm.LLM.chat` over the whole batch, top-k logprobs per token.

vLLM is imported inside methods only, so this module imports without it; a missing vLLM is a
BackendError that says how to install it. vLLM reports, per generated position, a dict
token_id -> Logprob(logprob, rank, decoded_token) holding the top-k plus the sampled token
(rank > k when it fell outside the top-k); `completion_from_vllm` turns that into trace Tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from confroute.backends.base import Backend, BackendError, Completion, GenParams
from confroute.traces import Message, Token, TopLogprob, Usage

_INSTALL_HINT = "pip install confroute[vllm]"


class VLLMBackend(Backend):
    """A model run in-process by vLLM's offline engine, with tensor parallelism."""

    kind = "vllm"

    def __init__(
        self,
        name: str,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,  # vLLM's default (0.9) when None
        max_model_len: int | None = None,  # the model's own context length when None
    ) -> None:
        self.name = name
        self.model = model
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self._llm: Any = None

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> VLLMBackend:
        """Build from a PanelModel spec dict; `model` is a Hugging Face id or a local path."""
        opts = {
            k: spec[k]
            for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")
            if spec.get(k) is not None
        }
        return cls(name, spec.get("model") or name, **opts)

    def version(self) -> str | None:
        return f"vllm {_import_vllm(self.name).__version__}"

    def complete_many(
        self, prompts: Sequence[Sequence[Message]], params: GenParams
    ) -> Iterator[tuple[int, Completion]]:
        """Generate the whole batch in one `LLM.chat` call, then yield in prompt order.

        latency_s is the wall time of that call: vLLM runs the requests together.
        """
        vllm = _import_vllm(self.name)
        sampling = vllm.SamplingParams(
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            logprobs=params.top_logprobs,
            seed=params.seed,
        )
        conversations = [[{"role": m.role, "content": m.content} for m in p] for p in prompts]
        t0 = time.perf_counter()
        outputs = self._engine().chat(conversations, sampling, use_tqdm=False)
        latency_s = time.perf_counter() - t0
        for i, output in enumerate(outputs):
            yield i, completion_from_vllm(output, self.name, latency_s, top_k=params.top_logprobs)

    def close(self) -> None:
        self._llm = None

    def _engine(self) -> Any:
        """The `vllm.LLM`, created on first use (loads the weights onto the GPUs)."""
        if self._llm is None:
            vllm = _import_vllm(self.name)
            optional = {
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "max_model_len": self.max_model_len,
            }
            self._llm = vllm.LLM(
                model=self.model,
                tensor_parallel_size=self.tensor_parallel_size,
                **{k: v for k, v in optional.items() if v is not None},
            )
        return self._llm


def completion_from_vllm(
    output: Any, model_name: str, latency_s: float, *, top_k: int | None = None
) -> Completion:
    """One vLLM `RequestOutput` as a Completion in the OpenAI token layout.

    top_k: the k that was asked for; by default the smallest per-position dict size, which is
    k whenever the sampled token was inside the top-k somewhere (always, under greedy decoding).
    """
    out = output.outputs[0]
    positions = out.logprobs or []
    k = top_k if top_k is not None else min((len(d) for d in positions), default=0)
    tokens = [
        _token(tid, d, k, model_name) for tid, d in zip(out.token_ids, positions, strict=False)
    ]
    return Completion(
        response=out.text,
        tokens=tokens,
        finish_reason=out.finish_reason or "unknown",
        usage=Usage(len(output.prompt_token_ids or []), len(out.token_ids)),
        latency_s=round(latency_s, 3),
        model=model_name,
    )


def _token(token_id: int, entries: Mapping[int, Any], k: int, model_name: str) -> Token:
    """The sampled token from its own entry; alternatives = best k ranks, by logprob desc."""
    chosen = entries.get(token_id)
    if chosen is None:
        raise BackendError(f"{model_name}: vLLM logprobs miss the sampled token {token_id}")
    ranked = sorted(entries.values(), key=lambda lp: lp.rank if lp.rank is not None else math.inf)
    top = sorted(ranked[:k], key=lambda lp: -lp.logprob)
    alts = [TopLogprob(_text(lp), float(lp.logprob)) for lp in top]
    return Token(_text(chosen), float(chosen.logprob), alts)


def _text(lp: Any) -> str:
    return lp.decoded_token if lp.decoded_token is not None else ""


def _import_vllm(name: str) -> Any:
    """vLLM itself, or a BackendError naming the extra that installs it."""
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(
            f"{name}: the vllm backend needs vLLM ({exc}); {_INSTALL_HINT}"
        ) from None
    return vllm
