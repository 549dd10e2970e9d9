"""Concurrent chat requests on the embedded llama.cpp backend, decoded together.

`confroute generate` batches a list it knows in advance (LlamaCppBackend.complete_many). The
service gets requests one at a time, at any moment; without this each waited for the one before
it. Here one scheduler thread owns the llama.cpp context while requests are active: a request
joins the running batch at the next decode step (its prompt prefilled in that step, one KV stream
per sequence as in generation), each sequence keeps its own decoding settings and random
generator, and a finished one hands back its completion and frees its slot for the next waiting
request. A request whose caller stopped waiting (deadline, client gone: the awaiting task is
cancelled) is dropped at the next step and its slot freed.

Greedy answers can differ slightly from a lone request's: llama.cpp's numerics depend on the
batch's shape (the same holds for generation; traces record n_parallel).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from confroute.backends.base import BackendError, Completion, GenParams, PromptTooLong
from confroute.traces import Message, Token, TopLogprob

if TYPE_CHECKING:
    from confroute.backends.llamacpp import LlamaCppBackend, _Slot


@dataclass
class _Request:
    messages: Sequence[Message]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion]


class Batcher:
    """Runs every concurrent request of one backend through one continuous batch."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.max_active = 0  # the largest batch seen (tests and the benchmark read it)
        self.generated = 0  # completion tokens decoded, cancelled requests' included

    async def complete(self, messages: Sequence[Message], params: GenParams) -> Completion:
        """One request's completion, decoded alongside whatever else is running."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        self._queue.put(_Request(messages, params, loop, future))
        return await future  # cancelled by the caller: the scheduler drops it

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"llama-batch-{self.backend.name}")
                self._thread.start()

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        b = self.backend
        waiting: list[_Request] = []
        while True:
            first = self._queue.get()  # idle: block until a request comes
            if first is None:
                return
            waiting.append(first)
            with b._lock:  # generation (complete_many) waits while requests are served
                try:
                    b._load()
                    stop = self._serve(waiting)
                except Exception as exc:  # the context failed: every waiting request hears it
                    for r in waiting:
                        _deliver(r, exc=BackendError(f"{b.name}: {exc}"))
                    waiting = []
                    stop = False
            if stop:
                return

    def _serve(self, waiting: list[_Request]) -> bool:
        """Decode until no request is active or waiting; True when asked to stop."""
        import llama_cpp

        b = self.backend
        free = list(range(b.n_parallel))[::-1]
        active: dict[int, tuple[_Slot, _Request, np.random.Generator]] = {}
        stop = False
        llama_cpp.llama_memory_clear(b._mem, True)
        while waiting or active:
            stop = self._take_new(waiting) or stop
            budget = b.n_batch - sum(len(s.pending) for s, _, _ in active.values())
            while waiting and free:
                req = waiting[0]
                if req.future.cancelled():
                    waiting.pop(0)
                    continue
                try:
                    ids = self._prompt(req)
                except PromptTooLong as exc:
                    waiting.pop(0)
                    _deliver(req, exc=exc)
                    continue
                if len(ids) > budget and active:
                    break  # prefill it at a later step, when the batch has room
                waiting.pop(0)
                from confroute.backends.llamacpp import _Slot

                slot = _Slot(0, free.pop(), ids, time.perf_counter(), pending=list(ids))
                active[slot.seq] = (slot, req, np.random.default_rng(req.params.seed))
                budget -= len(ids)
            if not active:
                continue
            self.max_active = max(self.max_active, len(active))
            slots = b._decode([s for s, _, _ in active.values()])
            for slot in self._step(slots, active):
                _, req, _ = active.pop(slot.seq)
                free.append(slot.seq)
                llama_cpp.llama_memory_seq_rm(b._mem, slot.seq, -1, -1)
                if slot.finish_reason != "cancelled":
                    _deliver(req, b._completion(slot))
        return stop

    def _take_new(self, waiting: list[_Request]) -> bool:
        """Move requests that arrived meanwhile into `waiting`; True if asked to stop."""
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return False
            if req is None:
                return True
            waiting.append(req)

    def _prompt(self, req: _Request) -> list[int]:
        b, p = self.backend, req.params
        ids = b.prompt_tokens(req.messages)
        if len(ids) + p.max_tokens > b.n_ctx_per_seq or len(ids) > b.n_batch:
            raise PromptTooLong(f"{b.name}: the prompt has {len(ids)} tokens; with max_tokens "
                                f"{p.max_tokens} it exceeds n_ctx_per_seq {b.n_ctx_per_seq} (or "
                                f"n_batch {b.n_batch})")
        return ids

    def _step(self, slots: list[_Slot],
              active: dict[int, tuple[_Slot, _Request, np.random.Generator]]) -> list[_Slot]:
        """Each slot's next token under its own request's settings; the slots that finished."""
        import llama_cpp

        from confroute.backends.llamacpp import _finish, _text, top_k_logprobs

        b = self.backend
        ptr = llama_cpp.llama_get_logits(b._ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(len(slots), b._n_vocab))
        k = max(active[s.seq][1].params.top_logprobs for s in slots)
        _, _, top_ids, top_lp = top_k_logprobs(logits, k, 0.0, np.random.default_rng(0))
        finished = []
        for r, slot in enumerate(slots):
            _, req, rng = active[slot.seq]
            p = req.params
            if req.future.cancelled():  # the caller stopped waiting: free the slot now
                finished.append(_finish(slot, "cancelled"))
                continue
            if p.temperature > 0:
                tok, lp = _sample(logits[r], p.temperature, rng)
            else:
                tok, lp = int(top_ids[r, 0]), float(top_lp[r, 0])
            if llama_cpp.llama_vocab_is_eog(b._vocab, tok):
                finished.append(_finish(slot, "stop"))
                continue
            piece = b._piece(tok)
            alts = [TopLogprob(_text(b._piece(int(t))), float(v))
                    for t, v in zip(top_ids[r, :p.top_logprobs], top_lp[r, :p.top_logprobs],
                                    strict=True)]
            slot.tokens.append(Token(_text(piece), lp, alts))
            slot.out_ids.append(tok)
            slot.out_bytes.append(piece)
            self.generated += 1
            if len(slot.out_ids) >= p.max_tokens:
                finished.append(_finish(slot, "length"))
            else:
                slot.pending = [tok]
        return finished


def _sample(row: np.ndarray, temperature: float, rng: np.random.Generator) -> tuple[int, float]:
    """A token drawn at `temperature` and its untempered logprob (as servers report it)."""
    x = row.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    z = (x - m) / temperature
    prob = np.exp(z - np.log(np.exp(z).sum()))
    tok = int(rng.choice(len(prob), p=prob / prob.sum()))
    return tok, float(x[tok] - lse)


def _deliver(req: _Request, completion: Completion | None = None,
             exc: BaseException | None = None) -> None:
    """Hand a result to the request's event loop (nothing if the caller has gone)."""
    def settle() -> None:
        if req.future.done():
            return
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(completion)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # that loop has closed
        req.loop.call_soon_threadsafe(settle)
