"""Decoding a chat reply's logprobs: today's decoder against one whose alternatives keep only
their logprob (the signals read nothing else), on the bench's 300-token top-5 reply.

    python bench/reply_decode.py [--n 300] [--out bench/results/reply_decode.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from servers import trace_body

from confroute.backends.openai_reply import _DECODER


class _Alt(msgspec.Struct, gc=False):
    logprob: float


class _Tok(msgspec.Struct, gc=False):
    token: str
    logprob: float
    top_logprobs: list[_Alt] = []


class _Lp(msgspec.Struct):
    content: list[_Tok] | None = None


class _Choice(msgspec.Struct):
    logprobs: _Lp | None = None


class _Reply(msgspec.Struct):
    choices: list[_Choice]


def _us(f: Callable[[], object], n: int) -> float:
    for _ in range(20):
        f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="decodes per decoder")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    body = json.dumps(trace_body(300)).encode()
    lean = msgspec.json.Decoder(_Reply)
    now, alt = _us(lambda: _DECODER.decode(body), a.n), _us(lambda: lean.decode(body), a.n)
    out = {"bytes": len(body), "decodes": a.n, "baseline_us": round(now, 1),
           "alts_logprob_only_us": round(alt, 1), "ratio": round(alt / now, 3)}
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
