"""Can this machine run the embedded llama.cpp build? One batched decode, in a child process.

A build made for instructions the CPU (or the VM) does not grant dies with SIGILL, which no
Python handler can catch, so the decode runs in a child and the parent reports what happened in
words. `python -m confroute.backends.selfcheck` exits 0 when a batch of real prompts decodes.
"""

from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
from confroute.backends.base import GenParams
from confroute.backends.llamacpp import LlamaCppBackend
from confroute.modelstore import resolve
from confroute.traces import Message

b = LlamaCppBackend("smollm2-135m", str(resolve("smollm2-135m")), n_parallel=2,
                    n_ctx_per_seq=256, n_threads=1)
prompts = [[Message("user", "Count from one to twenty, one number per line. " * 3)]] * 3
done = list(b.complete_many(prompts, GenParams(max_tokens=16, temperature=0.0, top_logprobs=5)))
assert len(done) == 3 and all(c.tokens for _, c in done), "no tokens decoded"
b.close()
"""


def check(timeout_s: float = 300.0) -> tuple[bool, str]:
    """(ok, what happened) for one batched decode of the smallest reference model."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return False, f"the check decode did not finish in {timeout_s:.0f} s"
    if proc.returncode == 0:
        return True, "llama.cpp decodes a batch on this CPU"
    if proc.returncode == -signal.SIGILL:
        return False, (
            "llama.cpp died with SIGILL (illegal instruction): the build uses CPU instructions "
            "this machine does not grant"
        )
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return False, f"the check decode failed (exit {proc.returncode}): " + " | ".join(tail)


def main() -> int:
    ok, message = check()
    print(("ok: " if ok else "error: ") + message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
