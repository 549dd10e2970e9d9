"""Embedded-backend throughput: single stream vs batched decoding, side by side in one run.

    python bench/generate.py [--model qwen2.5-coder-0.5b] [--prompts 16] [--max-tokens 256] [--widths 8,16]

Prints JSON: tokens/s for n_parallel=1 (the baseline: one sequence at a time, same code path) and
for each batched width, the ratio to the baseline, and the share of wall time spent extracting
top-k logprobs from the logits (target < 10%). Also times llama-cpp-python's high-level
`create_chat_completion` (no logprobs) on the first prompts, as the library's own reference.
Answers run 150-270 tokens; with a much smaller --max-tokens the run is prefill-bound (prefill does
not get faster with more sequences on CPU) and the ratio understates generation. Measure on idle
cores: two processes fighting over two cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from confroute.backends import GenParams
from confroute.backends.llamacpp import LlamaCppBackend
from confroute.modelstore import pull
from confroute.traces import Message
from training.datasets import load_items

PROMPT = (
    "Solve this math problem. Reason briefly, then end with the line 'The answer is: N' "
    "where N is a number.\n\n{question}"
)


def run(model: str, width: int, prompts: list[list[Message]], params: GenParams) -> dict:
    """Decode every prompt with `width` sequences in flight; return throughput figures."""
    backend = LlamaCppBackend(model, str(pull(model)), n_parallel=width)
    backend._load()  # load outside the timed region
    t0 = time.perf_counter()
    usages = [c.usage for _, c in backend.complete_many(prompts, params)]
    wall = time.perf_counter() - t0
    n = sum(u.completion_tokens for u in usages)
    stats = backend.stats
    backend.close()
    return {
        "n_parallel": width,
        "prompt_tokens": sum(u.prompt_tokens for u in usages),
        "completion_tokens": n,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(n / wall, 2),
        "topk_share_of_wall": round(stats.topk_s / wall, 4),
        "decode_share_of_wall": round(stats.decode_s / wall, 4),
    }


def high_level(model: str, prompts: list[list[Message]], params: GenParams, n: int) -> dict:
    """llama-cpp-python's own chat call, greedy, no logprobs: the library's reference speed."""
    import llama_cpp

    llm = llama_cpp.Llama(str(pull(model)), n_ctx=1024, verbose=False)
    tokens, t0 = 0, time.perf_counter()
    for msgs in prompts[:n]:
        out = llm.create_chat_completion(
            [{"role": m.role, "content": m.content} for m in msgs],
            max_tokens=params.max_tokens,
            temperature=0.0,
        )
        tokens += out["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    llm.close()
    return {"prompts": n, "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--widths", default="8,16")
    args = ap.parse_args()
    items = load_items("gsm8k:test", limit=args.prompts)
    prompts = [[Message("user", PROMPT.format(question=it.question))] for it in items]
    params = GenParams(max_tokens=args.max_tokens)
    baseline = run(args.model, 1, prompts, params)
    batched = [run(args.model, int(w), prompts, params) for w in args.widths.split(",")]
    for b in batched:
        b["ratio_vs_single"] = round(b["tokens_per_s"] / baseline["tokens_per_s"], 2)
    report = {
        "model": args.model,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "max_tokens": args.max_tokens,
        "single_stream": baseline,
        "batched": batched,
        "high_level_chat_call": high_level(args.model, prompts, params, n=4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
