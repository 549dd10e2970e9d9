"""Concurrent chat requests on the embedded backend: today's serial path vs requests decoded
together (llamacpp_batcher.py), side by side in one run.

    python bench/batching.py [--model qwen2.5-coder-0.5b] [--clients 1,4,8] [--requests 2]
                             [--max-tokens 96] [--threads 1] [--out f.json]

Each of C clients sends `--requests` MultiArith questions one after another through
`LlamaCppBackend.acomplete` (what the chat endpoint calls), greedy, top-5 logprobs. Prints JSON:
requests/s and p50/p95 latency per client count and mode, and batched/serial ratios. Targets
(issue 17): >= 1.5x requests/s at 8 clients; one client not slower by more than 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from confroute.backends import GenParams
from confroute.backends.llamacpp import LlamaCppBackend
from confroute.modelstore import pull
from confroute.traces import Message
from training.datasets import load_items

PROMPT = ("Solve this math problem. Reason briefly, then end with the line 'The answer is: N' "
          "where N is a number.\n\n{question}")


async def _load(backend: LlamaCppBackend, prompts: list[list[Message]], clients: int,
                per_client: int, params: GenParams) -> dict[str, Any]:
    latencies: list[float] = []

    async def client(c: int) -> None:
        for i in range(per_client):
            messages = prompts[(c * per_client + i) % len(prompts)]
            t0 = time.perf_counter()
            await backend.acomplete(messages, params)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 2),
            "p95_s": round(float(np.percentile(latencies, 95)), 2), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--requests", type=int, default=2, help="per client")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    items = load_items("multiarith:test", limit=max(clients) * args.requests)
    prompts = [[Message("user", PROMPT.format(question=it.question))] for it in items]
    params = GenParams(max_tokens=args.max_tokens, temperature=0.0, top_logprobs=5)
    path = str(pull(args.model))
    out: dict[str, Any] = {"model": args.model, "max_tokens": args.max_tokens,
                           "threads": args.threads, "cpu_count": os.cpu_count(),
                           "load_average_start": os.getloadavg()}
    for mode, batched in (("serial", False), ("batched", True)):
        backend = LlamaCppBackend(args.model, path, n_parallel=max(clients), n_ctx_per_seq=768,
                                  n_threads=args.threads, batch_requests=batched)
        asyncio.run(backend.acomplete(prompts[0], GenParams(max_tokens=4)))  # load, warm up
        out[mode] = {str(c): asyncio.run(_load(backend, prompts, c, args.requests, params))
                     for c in clients}
        backend.close()
    out["batched_vs_serial"] = {str(c): round(out["batched"][str(c)]["requests_per_s"]
                                              / out["serial"][str(c)]["requests_per_s"], 3)
                                for c in clients}
    out["load_average_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
