"""Proxy overhead for bench/service.py --only proxy: chat through the router to a stub backend on
loopback, minus calling that backend directly, beside the floor proxies (floor_proxies.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from servers import PANEL, Server, write_panel


def proxy_overhead(models_dir: Path, tmp: Path, n: int, rounds: int = 1,
                   baseline_src: Path | None = None) -> dict[str, Any]:
    """p50 of chat through the router minus calling the stub backend directly, over `rounds`
    interleaved rounds of `n` sequential calls, with the decision log durable (the default: the
    reply waits for its fsync) and fast; and each server's CPU time per call over those calls
    (every thread, from /proc: steadier than latency on a shared machine, and what bounds a
    worker's capacity); with `baseline_src` (another checkout's `src`) routers
    from that code are timed in the same rounds, and the ratios reported. The two floor proxies
    (floor_proxies.py: the bare hop, and the hop plus reading the reply into arrays) are timed in
    the same rounds too."""
    stub = Server("stub", models_dir, tmp)
    write_panel(tmp / "panel.yaml", stub.url + "/v1")
    trees = {"version": None} | ({"baseline": baseline_src} if baseline_src else {})
    routers = {f"{tree}.{log}": Server(kind, models_dir, tmp, src=src)
               for tree, src in trees.items()
               for log, kind in (("durable", "route"), ("fast", "route_fast"))}
    routers |= {f"floor.{k}": Server(f"floor_{k}", models_dir, tmp) for k in ("hop", "decode")}
    chat = {"messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 300}
    runs: dict[str, list[float]] = {"direct": [], **{k: [] for k in routers}}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    try:
        with httpx.Client(timeout=30) as c:
            for _ in range(rounds):
                p50, ms = _sequential(lambda: c.post(
                    stub.url + "/v1/chat/completions",
                    json={**chat, "model": PANEL[0], "logprobs": True, "top_logprobs": 5}), n,
                    stub.proc.pid)
                runs["direct"].append(p50)
                cpu["direct"].append(ms)
                for name, r in routers.items():
                    p50, ms = _sequential(lambda r=r: c.post(
                        r.url + "/v1/chat/completions", json={**chat, "model": "confroute:1"}), n,
                        r.proc.pid)
                    runs[name].append(p50)
                    cpu[name].append(ms)
    finally:
        for r in routers.values():
            r.stop()
        stub.stop()
    med = {k: float(np.median(v)) for k, v in runs.items()}
    over = {k: round(v - med["direct"], 2) for k, v in med.items() if k != "direct"}
    out: dict[str, Any] = {
        "backend_direct_p50_ms": round(med["direct"], 2),
        "through_router_p50_ms": {k: round(med[k], 2) for k in routers},
        "overhead_p50_ms": over, "backend_reply_tokens": 300, "rounds": rounds,
        "calls_per_round": n, "per_round_p50_ms": runs,
        # the server's own CPU per call (the stub's for "direct"; the routers' exclude the stub's)
        "server_cpu_ms_per_call": {k: round(float(np.median(v)), 3) for k, v in cpu.items()},
        "per_round_server_cpu_ms": cpu}
    if baseline_src is not None:
        out |= {"baseline_src": str(baseline_src), "ratio_overhead_version_over_baseline": {
            log: round(over[f"version.{log}"] / over[f"baseline.{log}"], 3)
            if over[f"baseline.{log}"] > 0 else None for log in ("durable", "fast")},
            # the least any Python router reading the logprobs could reach, as the same ratio
            "ratio_overhead_floor_over_baseline_fast": {
                k: round(over[f"floor.{k}"] / over["baseline.fast"], 3)
                if over["baseline.fast"] > 0 else None for k in ("hop", "decode")},
            "ratio_server_cpu_over_baseline_fast": {
                k: round(out["server_cpu_ms_per_call"][k]
                         / out["server_cpu_ms_per_call"]["baseline.fast"], 3)
                for k in ("version.fast", "version.durable", "floor.hop", "floor.decode")}}
    return out


def _sequential(call: Any, n: int, pid: int) -> tuple[float, float]:
    """p50 latency of `n` calls (ms), and server `pid`'s CPU time per call over them (ms)."""
    for _ in range(10):
        call().raise_for_status()
    samples = []
    cpu0 = _cpu_s(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        call().raise_for_status()
        samples.append(time.perf_counter() - t0)
    return (round(float(np.median(samples)) * 1e3, 2),
            round((_cpu_s(pid) - cpu0) / n * 1e3, 3))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
