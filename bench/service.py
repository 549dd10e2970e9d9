"""Router service benchmark, side by side in one run, for one 300-token top-5 trace (OpenAI layout).

1. Throughput of three servers, each one uvicorn worker on loopback, driven by the same load
   generator (wrk with a Lua POST script; an httpx async client if wrk is missing):
   the floor (a raw ASGI app that reads the body and returns a constant), a naive FastAPI
   endpoint validating the body into pydantic models, and confroute's /v1/route.
2. In-process decision latency, decoded arrays -> decision (signals, ONNX, calibration, policy),
   plus the parts before it (msgspec decode, token arrays, answer extraction).
3. Proxy overhead: /v1/chat/completions through the router to a stub OpenAI backend on loopback,
   minus calling that backend directly.

    python bench/service.py [--duration 5] [--rounds 3] [--connections 8] [--models-dir models]
                            [--out f.json] [--only decision|throughput|proxy|durability|workers]
                            [--baseline-src ../base/src]  # with --only proxy or decision: before/after

Without --models-dir a version with 200-tree LightGBM classifiers is fitted on synthetic rows.
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from decision import compare_decision_sources, compare_decisions, decision_latency
from proxy import proxy_overhead
from servers import Server, synthetic_version, trace_body, write_panel

# -- load ----------------------------------------------------------------------------------------


def wrk(url: str, body_file: Path, duration: int, connections: int, tmp: Path) -> dict[str, Any]:
    script = tmp / f"{body_file.stem}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"requests_per_s": round(rps, 1), "non_2xx": int(bad.group(1)) if bad else 0}


def find_wrk() -> str | None:
    """wrk (a compiled load generator: a Python client measures itself, not the server): on
    PATH, else installed from Debian's `wrk` package when this runs as root with apt-get; None
    (the httpx fallback, said so in the JSON) when neither works."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, check=False,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk")


def httpx_load(url: str, body: bytes, duration: int, connections: int) -> dict[str, Any]:
    async def run() -> tuple[int, int]:
        ok = bad = 0
        end = time.monotonic() + duration
        async with httpx.AsyncClient(timeout=30) as c:
            async def worker() -> None:
                nonlocal ok, bad
                while time.monotonic() < end:
                    r = await c.post(url, content=body,
                                     headers={"content-type": "application/json"})
                    ok, bad = (ok + 1, bad) if r.status_code == 200 else (ok, bad + 1)
            await asyncio.gather(*(worker() for _ in range(connections)))
        return ok, bad

    ok, bad = asyncio.run(run())
    return {"requests_per_s": round((ok + bad) / duration, 1), "non_2xx": bad}


def compact_body(body: dict[str, Any]) -> dict[str, Any]:
    """The same answer in the compact numeric form."""
    content = body["choices"][0]["logprobs"]["content"]
    return {"model": body["model"], "response": body["choices"][0]["message"]["content"],
            "compact": {"logprob": [t["logprob"] for t in content],
                        "top_logprobs": [[a["logprob"] for a in t["top_logprobs"]]
                                         for t in content],
                        "tokens": [t["token"] for t in content]}}


def rounds(runs: dict[str, tuple[str, bytes]], models_dir: Path, tmp: Path,
           args: argparse.Namespace, workers: dict[str, int] | None = None) -> dict[str, Any]:
    """All servers up at once, measured in interleaved rounds (median): the machine's background
    load drifts, and interleaving exposes every server to the same drift."""
    tool = "wrk" if find_wrk() else "httpx (fallback: no wrk; the client, not the server, limits it)"
    servers = {name: Server(kind, models_dir, tmp, (workers or {}).get(name, 1))
               for name, (kind, _) in runs.items()}
    rps: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for _ in range(args.rounds):
            for name, (_, payload) in runs.items():
                body_file = tmp / f"{name}.json"
                body_file.write_bytes(payload)
                url = servers[name].url + "/v1/route"
                httpx.post(url, content=payload, headers={"content-type": "application/json"}
                           ).raise_for_status()
                got = (wrk(url, body_file, args.duration, args.connections, tmp) if tool == "wrk"
                       else httpx_load(url, payload, args.duration, args.connections))
                assert got["non_2xx"] == 0, (name, got)
                rps[name].append(got["requests_per_s"])
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, Any] = {"load_generator": tool, "duration_s": args.duration,
                           "rounds": args.rounds, "connections": args.connections}
    for name, values in rps.items():
        out[name] = {"requests_per_s": round(float(np.median(values)), 1), "rounds": values,
                     "body_bytes": len(runs[name][1])}
    return out


def throughput(models_dir: Path, tmp: Path, body: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """/v1/route beside the raw ASGI floor and a naive FastAPI endpoint."""
    compact = json.dumps(compact_body(json.loads(body))).encode()
    runs = {"floor": ("floor", body), "naive": ("naive", body), "route": ("route", body),
            "route_fast": ("route_fast", body), "route_compact": ("route", compact)}
    out = rounds(runs, models_dir, tmp, args)
    f, n, r, rf, c = (out[k]["requests_per_s"] for k in runs)
    out["route_vs_floor"], out["route_vs_naive"] = round(r / f, 3), round(r / n, 2)
    out["route_fast_vs_floor"] = round(rf / f, 3)
    out["route_compact_vs_floor"] = round(c / f, 3)
    return out


def durability(models_dir: Path, tmp: Path, body: bytes, args: argparse.Namespace
               ) -> dict[str, Any]:
    """/v1/route with the durable decision log (the default: no reply before its record is
    committed, group commit) beside log_durability=fast, same body, interleaved rounds."""
    out = rounds({"durable": ("route", body), "fast": ("route_fast", body)}, models_dir, tmp, args)
    out["durable_vs_fast"] = round(out["durable"]["requests_per_s"]
                                   / out["fast"]["requests_per_s"], 3)
    return out


def workers(models_dir: Path, tmp: Path, body: bytes, args: argparse.Namespace
            ) -> dict[str, Any]:
    """/v1/route at 1 and 2 workers beside the raw ASGI floor at 1 and 2 workers."""
    runs = {"floor_1": ("floor", body), "floor_2": ("floor", body), "route_1": ("route", body),
            "route_2": ("route", body)}
    out = rounds(runs, models_dir, tmp, args, {k: int(k[-1]) for k in runs})
    rps = {k: out[k]["requests_per_s"] for k in runs}
    out["route_2_vs_1"] = round(rps["route_2"] / rps["route_1"], 3)
    out["floor_2_vs_1"] = round(rps["floor_2"] / rps["floor_1"], 3)
    out["route_vs_floor_1"] = round(rps["route_1"] / rps["floor_1"], 3)
    out["route_vs_floor_2"] = round(rps["route_2"] / rps["floor_2"], 3)
    return out



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds per server and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--baseline-models-dir", type=Path,
                   help="with --only decision: also time this version, rounds interleaved, "
                        "and report the ratio of p50s (models-dir / baseline)")
    p.add_argument("--baseline-src", type=Path,
                   help="with --only proxy or decision: also time a router (decision: the "
                        "in-process path) importing confroute from this source tree (another "
                        "checkout's src/), rounds interleaved")
    p.add_argument("--out", type=Path)
    p.add_argument("--only", help="run one part",
                   choices=["decision", "throughput", "proxy", "durability", "workers"])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="confroute-bench-"))
    try:
        models_dir = args.models_dir or synthetic_version(tmp / "models")
        body = json.dumps(trace_body()).encode()
        write_panel(tmp / "panel.yaml", "http://127.0.0.1:9/v1")  # /v1/route needs no backend
        parts = {"decision": lambda: decision_latency(models_dir, body, args.iterations),
                 "throughput": lambda: throughput(models_dir, tmp, body, args),
                 "proxy": lambda: proxy_overhead(models_dir, tmp, 200, args.rounds,
                                                 args.baseline_src),
                 "durability": lambda: durability(models_dir, tmp, body, args),
                 "workers": lambda: workers(models_dir, tmp, body, args)}
        result: dict[str, Any] = {
            "trace": {"tokens": 300, "top_logprobs": 5, "body_bytes": len(body)},
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
        for name, run in parts.items():
            if args.only in (None, name):
                result[name] = run()
        if args.baseline_src and args.only == "decision":
            result = compare_decision_sources(models_dir, args.baseline_src, args.iterations,
                                              args.rounds) | {"trace": result["trace"]}
        elif args.baseline_models_dir and args.only == "decision":
            result = compare_decisions(models_dir, args.baseline_models_dir, body,
                                       args.iterations, args.rounds) | {"trace": result["trace"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
