"""Embedded llama.cpp backend (CPU): continuous batching with top-k logprobs from the logits.

llama-cpp-python's own `logprobs` path converts the whole vocabulary to Python per token and is far
too slow for a 151k vocabulary; here one numpy pass over the (n_seq, n_vocab) logits of a decode
step gives the chosen token, its logprob and the top-k. Up to `n_parallel` sequences are decoded
together in one context (`n_seq_max`, one KV stream per sequence), which the high-level
`Llama` class does not set up for generation; a finished sequence's slot takes the next prompt.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from confroute.backends.base import Backend, BackendError, Completion, GenParams, PromptTooLong
from confroute.traces import Message, Token, TopLogprob, Usage


@dataclass
class _Slot:
    """One sequence being decoded: its prompt index, position and output so far."""

    index: int
    seq: int
    prompt: list[int]
    started: float
    pos: int = 0
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next decode
    out_ids: list[int] = field(default_factory=list)
    out_bytes: list[bytes] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str = ""


@dataclass
class DecodeStats:
    """Where the time went, for the throughput benchmark."""

    decode_s: float = 0.0
    topk_s: float = 0.0
    tokens: int = 0
    steps: int = 0


class LlamaCppBackend(Backend):
    """A GGUF model run in-process by llama.cpp."""

    kind = "llamacpp"

    def __init__(
        self,
        name: str,
        model_path: str,
        *,
        n_parallel: int = 8,
        n_ctx_per_seq: int = 1024,
        n_threads: int | None = None,
        n_batch: int = 2048,
        batch_requests: bool = True,
    ) -> None:
        self.name = name
        self.model_path = model_path
        self.n_parallel = n_parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.stats = DecodeStats()
        self._lock = threading.Lock()
        self._llm: Any = None
        self._ctx: Any = None
        self._pieces: dict[int, bytes] = {}
        # the service's concurrent requests decoded together (llamacpp_batcher.py); False:
        # one request at a time in a worker thread, as before
        self.batch_requests = batch_requests
        self._batcher: Any = None

    @staticmethod
    def model_file(name: str, spec: dict[str, Any]) -> Path:
        """The GGUF a panel entry names (a reference model is pulled and verified if needed)."""
        from confroute.modelstore import resolve

        return resolve(str(spec.get("model_path") or spec.get("model") or name))

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> LlamaCppBackend:
        path = cls.model_file(name, spec)
        opts = {k: spec[k] for k in ("n_parallel", "n_ctx_per_seq", "n_threads", "batch_requests")
                if k in spec}
        return cls(name, str(path), **opts)

    def version(self) -> str | None:
        import llama_cpp

        return f"llama-cpp-python {llama_cpp.__version__}"

    # -- engine set-up -------------------------------------------------------------------------

    def _load(self) -> None:
        if self._ctx is not None:
            return
        import llama_cpp

        threads = self.n_threads or max(1, _cpu_count())
        self._llm = llama_cpp.Llama(
            self.model_path, n_ctx=256, n_threads=threads, verbose=False, n_batch=64
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_parallel * self.n_ctx_per_seq
        params.n_batch = self.n_batch
        params.n_ubatch = min(512, self.n_batch)
        params.n_seq_max = self.n_parallel
        # One KV stream per sequence: with a unified cache llama.cpp let one sequence's prompt
        # change another's logits here (up to ~1 nat at the first token); split is also faster.
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
        if not self._ctx:
            raise BackendError(f"{self.name}: llama.cpp could not create a context")
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._formatter = _chat_formatter(self._llm)

    async def acomplete(self, messages: Sequence[Message], params: GenParams,
                        deadline: float | None = None) -> Completion:
        """One request; concurrent ones join one running batch (batch_requests, the default).
        No retries here: the caller's timeout bounds the call (`deadline` is not read)."""
        if not self.batch_requests:
            return await super().acomplete(messages, params)
        if self._batcher is None:
            from confroute.backends.llamacpp_batcher import Batcher

            self._batcher = Batcher(self)
        completion: Completion = await self._batcher.complete(messages, params)
        return completion

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self._ctx is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """The chat template applied to `messages`, tokenized, ready for the first decode."""
        self._load()
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        result = self._formatter(messages=msgs)
        return list(
            self._llm.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        )

    def _piece(self, tok: int) -> bytes:
        piece = self._pieces.get(tok)
        if piece is None:
            import llama_cpp

            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, True)
            if n < 0:  # the piece needs -n bytes
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, True)
            piece = buf.raw[:n]
            self._pieces[tok] = piece
        return piece

    # -- generation ----------------------------------------------------------------------------

    def complete_many(
        self, prompts: Sequence[Sequence[Message]], params: GenParams
    ) -> Iterator[tuple[int, Completion]]:
        with self._lock:
            self._load()
            yield from self._run(prompts, params)

    def _run(
        self, prompts: Sequence[Sequence[Message]], params: GenParams
    ) -> Iterator[tuple[int, Completion]]:
        import llama_cpp

        queue = list(enumerate(prompts))[::-1]
        free = list(range(self.n_parallel))[::-1]
        active: dict[int, _Slot] = {}
        rng = np.random.default_rng(params.seed)
        llama_cpp.llama_memory_clear(self._mem, True)
        while queue or active:
            budget = self.n_batch - sum(len(s.pending) for s in active.values())
            while queue and free and len(active) < self.n_parallel:
                index, messages = queue[-1]
                ids = self.prompt_tokens(messages)
                if len(ids) + params.max_tokens > self.n_ctx_per_seq or len(ids) > self.n_batch:
                    queue.pop()
                    raise PromptTooLong(
                        f"{self.name}: prompt {index} has {len(ids)} tokens; with max_tokens "
                        f"{params.max_tokens} it exceeds n_ctx_per_seq {self.n_ctx_per_seq} "
                        f"(or n_batch {self.n_batch})"
                    )
                if len(ids) > budget and active:
                    break  # prefill it at a later step, when the batch has room
                queue.pop()
                slot = _Slot(index, free.pop(), ids, time.perf_counter(), pending=list(ids))
                active[slot.seq] = slot
                budget -= len(ids)
            order = self._decode(list(active.values()))
            for slot in self._step(order, params, rng):
                del active[slot.seq]
                free.append(slot.seq)
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                yield slot.index, self._completion(slot)

    def _decode(self, slots: list[_Slot]) -> list[_Slot]:
        """Feed every slot's pending tokens in one batch; logits only at each slot's last token."""
        import llama_cpp

        b, n = self._batch, 0
        for slot in slots:
            last = len(slot.pending) - 1
            for j, tok in enumerate(slot.pending):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, slot.pos + j, 1
                b.seq_id[n][0] = slot.seq
                b.logits[n] = j == last
                n += 1
            slot.pos += len(slot.pending)
            slot.pending = []
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, b)
        self.stats.decode_s += time.perf_counter() - t0
        if rc != 0:
            raise BackendError(f"{self.name}: llama_decode returned {rc}")
        return slots

    def _step(self, slots: list[_Slot], params: GenParams, rng: np.random.Generator) -> list[_Slot]:
        """Pick each slot's next token from its logits; return the slots that finished."""
        import llama_cpp

        t0 = time.perf_counter()
        ptr = llama_cpp.llama_get_logits(self._ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(len(slots), self._n_vocab))
        chosen, chosen_lp, top_ids, top_lp = top_k_logprobs(
            logits, params.top_logprobs, params.temperature, rng
        )
        self.stats.topk_s += time.perf_counter() - t0
        self.stats.steps += 1
        finished = []
        for r, slot in enumerate(slots):
            tok = int(chosen[r])
            if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                finished.append(_finish(slot, "stop"))
                continue
            piece = self._piece(tok)
            alts = [
                TopLogprob(_text(self._piece(int(t))), float(v))
                for t, v in zip(top_ids[r], top_lp[r], strict=True)
            ]
            slot.tokens.append(Token(_text(piece), float(chosen_lp[r]), alts))
            slot.out_ids.append(tok)
            slot.out_bytes.append(piece)
            self.stats.tokens += 1
            if len(slot.out_ids) >= params.max_tokens:
                finished.append(_finish(slot, "length"))
            else:
                slot.pending = [tok]
        return finished

    def _completion(self, slot: _Slot) -> Completion:
        return Completion(
            response=b"".join(slot.out_bytes).decode("utf-8", errors="replace"),
            tokens=slot.tokens,
            finish_reason=slot.finish_reason,
            usage=Usage(len(slot.prompt), len(slot.out_ids)),
            latency_s=round(time.perf_counter() - slot.started, 3),
            model=self.name,
        )


def top_k_logprobs(
    logits: np.ndarray, k: int, temperature: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chosen token, its logprob, and the top-k ids and logprobs (descending) per row.

    logits: (n, V) float32. Logprobs are of the untempered distribution, as servers report them.
    """
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1, dtype=np.float64))
    k = max(1, min(k, logits.shape[1]))
    part = np.argpartition(logits, -k, axis=1)[:, -k:]
    part_vals = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-part_vals, axis=1, kind="stable")
    top_ids = np.take_along_axis(part, order, axis=1)
    top_lp = np.take_along_axis(part_vals, order, axis=1).astype(np.float64) - lse[:, None]
    if temperature <= 0:
        chosen = top_ids[:, 0]
    else:
        z = (logits - m) / temperature
        p = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
        chosen = np.array([rng.choice(p.shape[1], p=row / row.sum()) for row in p])
    rows = np.arange(logits.shape[0])
    chosen_lp = logits[rows, chosen].astype(np.float64) - lse
    return chosen, chosen_lp, top_ids, top_lp


def _finish(slot: _Slot, reason: str) -> _Slot:
    slot.finish_reason = reason
    return slot


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _chat_formatter(llm: Any) -> Any:
    """The GGUF's own chat template (what llama.cpp's server would apply)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise BackendError(f"{llm.model_path}: the GGUF carries no chat template")
    vocab_text = llm._model.token_get_text
    eos = vocab_text(llm.token_eos()) if llm.token_eos() != -1 else ""
    bos = vocab_text(llm.token_bos()) if llm.token_bos() != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
