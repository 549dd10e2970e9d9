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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PANEL = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


# -- the trace ---------------------------------------------------------------------------------


def trace_body(n_tokens: int = 300) -> dict[str, Any]:
    """A real answer's tokens (top-5), repeated to n_tokens, as a chat completion response."""
    from confroute.traces import read_traces

    traces = read_traces(ROOT / "tests/confroute/fixtures/traces_sample.jsonl")
    t = max(traces, key=lambda x: len(x.tokens))
    toks = (t.tokens * (n_tokens // len(t.tokens) + 1))[:n_tokens]
    content = [{"token": x.token, "logprob": x.logprob,
                "top_logprobs": [{"token": a.token, "logprob": a.logprob}
                                 for a in x.top_logprobs]} for x in toks]
    text = "".join(x.token for x in toks)
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": t.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 80, "completion_tokens": n_tokens,
                      "total_tokens": 80 + n_tokens}}


def synthetic_version(models_dir: Path) -> Path:
    """A version with 200-tree LightGBM classifiers (like the issue's latency figure)."""
    sys.path[:0] = [str(ROOT / "tests/confroute"), str(ROOT / "tests")]  # conftest imports support
    from service.conftest import build_version

    build_version(models_dir, classifier="lightgbm", calibration="isotonic",
                  params={"n_estimators": 200, "num_leaves": 15, "min_child_samples": 5})
    return models_dir


# -- servers (each run as `python bench/service.py --serve KIND`) ------------------------------


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers a constant."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"decision":"accept"}'})


class NaiveTop(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class NaiveToken(NaiveTop):
    top_logprobs: list[NaiveTop] = []


class NaiveLogprobs(BaseModel):
    content: list[NaiveToken]


class NaiveChoice(BaseModel):
    logprobs: NaiveLogprobs
    finish_reason: str | None = None


class NaiveBody(BaseModel):
    """The OpenAI response layout as pydantic models: the naive baseline."""

    model: str
    choices: list[NaiveChoice]


def naive_app() -> Any:
    """FastAPI validating the body into pydantic models, then answering a constant."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/route")
    async def route(body: NaiveBody) -> dict[str, str]:
        return {"decision": "accept", "model": body.model}

    return app


def stub_backend(body: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def bench_factory() -> Any:
    """The app of one worker of a several-worker bench server (settings from the environment)."""
    return make_app(os.environ["BENCH_KIND"], os.environ["BENCH_MODELS"], os.environ["BENCH_TMP"],
                    int(os.environ["BENCH_PORT"]))


def serve(kind: str, port: int, models_dir: str, tmp: str, workers: int = 1) -> None:
    import uvicorn

    if workers > 1:  # uvicorn starts workers from an import string
        os.environ.update(BENCH_KIND=kind, BENCH_MODELS=models_dir, BENCH_TMP=tmp,
                          BENCH_PORT=str(port))
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(dir=tmp))
        sys.path.insert(0, str(Path(__file__).parent))
        uvicorn.run("service:bench_factory", factory=True, host="127.0.0.1", port=port,
                    log_level="warning", workers=workers)
        return
    uvicorn.run(make_app(kind, models_dir, tmp, port), host="127.0.0.1", port=port,
                log_level="warning", workers=1)


def make_app(kind: str, models_dir: str, tmp: str, port: int) -> Any:
    """The ASGI app of one bench server kind."""
    if kind == "floor":
        app: Any = floor_app
    elif kind == "naive":
        app = naive_app()
    elif kind == "stub":
        app = stub_backend(json.dumps(trace_body()).encode())
    else:  # route: the default (durable) decision log; route_fast: log_durability=fast
        from confroute.service import create_app
        from confroute.settings import Settings

        panel = Path(tmp) / "panel.yaml"
        app = create_app(Settings(models_dir=Path(models_dir), panel=panel,
                                  decision_log=str(Path(tmp) / f"decisions-{port}.db"),
                                  spill_path=Path(tmp) / f"spill-{port}.jsonl",
                                  log_durability="fast" if kind == "route_fast" else "durable",
                                  workers=int(os.environ.get("BENCH_WORKERS", "1"))))
    return app


def write_panel(path: Path, stub_url: str) -> None:
    import yaml

    models = [{"name": m, "backend": "openai", "model": m, "base_url": stub_url, "max_retries": 0,
               "cost": {"per_call": float(i + 1)}} for i, m in enumerate(PANEL)]
    path.write_text(yaml.safe_dump({"name": "bench", "models": models}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source_env(src: Path | None) -> dict[str, str]:
    """This process's environment, importing confroute from `src` (another checkout's `src/`)
    when given: PYTHONPATH comes before the editable install's .pth entry."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
    return env


class Server:
    """A bench server in its own process."""

    def __init__(self, kind: str, models_dir: Path, tmp: Path, workers: int = 1,
                 src: Path | None = None) -> None:
        """`src`: import confroute from this source tree instead (a baseline checkout)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--serve", kind, "--port", str(self.port),
               "--models-dir", str(models_dir), "--tmp", str(tmp), "--workers", str(workers)]
        env = {**source_env(src), "BENCH_WORKERS": str(workers)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        ready = "/healthz" if kind.startswith("route") else "/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{kind} server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


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
    tool = "wrk" if shutil.which("wrk") else "httpx"
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
            "route_compact": ("route", compact)}
    out = rounds(runs, models_dir, tmp, args)
    f, n, r, c = (out[k]["requests_per_s"] for k in runs)
    out["route_vs_floor"], out["route_vs_naive"] = round(r / f, 3), round(r / n, 2)
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


# -- in-process latency ------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": round(float(np.percentile(a, 50)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1)}


def timed(fn: Any, n: int) -> dict[str, float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def decision_latency(models_dir: Path, body: bytes, n: int) -> dict[str, Any]:
    from confroute.engine import Engine, StageInput
    from confroute.grading import NumericGrader
    from confroute.service.route import decode
    from confroute.tokens import token_arrays

    engine = Engine(models_dir, None, NumericGrader(), 0.5)
    v = engine.reload()
    req = decode(body, batch=False)[0]
    assert req.choices and req.choices[0].logprobs and req.choices[0].logprobs.content
    tokens = req.choices[0].logprobs.content
    arr = token_arrays(tokens)
    stage = StageInput(PANEL[0], arr, None, "stop", 300, ())
    x = engine.signals(v, stage)[0][None]
    return {
        "version": v.version,
        "decide_from_arrays": timed(lambda: engine.decide(v, stage, 0.5), n),
        "of_which_signals_with_answer_extraction": timed(lambda: engine.signals(v, stage), n),
        "of_which_onnx_and_calibration": timed(lambda: v.scorer.predict(PANEL[0], x), n),
        "of_which_policy": timed(lambda: v.policy.decide(PANEL[0], 0.7, 0.5), n),
        "msgspec_decode": timed(lambda: decode(body, batch=False), n),
        "token_arrays": timed(lambda: token_arrays(tokens), n),
        "answer_extraction": timed(lambda: engine.grader.extract(arr.text), n),
    }


_DECISION_KEYS = ("decide_from_arrays", "of_which_signals_with_answer_extraction",
                  "of_which_onnx_and_calibration", "of_which_policy")


def _decision_summary(runs: dict[str, list[dict[str, Any]]], n: int, rounds: int
                      ) -> dict[str, Any]:
    """Median p50 of each side over its rounds, and version / baseline ratios."""
    med = {side: {k: float(np.median([r[k]["p50_us"] for r in rs])) for k in _DECISION_KEYS}
           for side, rs in runs.items()}
    return {"rounds": rounds, "iterations": n,
            "version": {"id": runs["version"][0]["version"], **med["version"]},
            "baseline": {"id": runs["baseline"][0]["version"], **med["baseline"]},
            "ratio_version_over_baseline": {
                k: round(med["version"][k] / med["baseline"][k], 3) for k in _DECISION_KEYS},
            "per_round": runs, "load_average": os.getloadavg()}


def compare_decisions(models_dir: Path, baseline: Path, body: bytes, n: int, rounds: int
                      ) -> dict[str, Any]:
    """decision_latency of two versions in alternating rounds; median p50 of each, and ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"version": [], "baseline": []}
    for _ in range(rounds):
        runs["baseline"].append(decision_latency(baseline, body, n))
        runs["version"].append(decision_latency(models_dir, body, n))
    return _decision_summary(runs, n, rounds)


def compare_decision_sources(models_dir: Path, baseline_src: Path, n: int, rounds: int
                             ) -> dict[str, Any]:
    """decision_latency of one version under this tree's code and `baseline_src`'s (another
    checkout's `src`), each round a fresh process per tree, alternating; medians and ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"version": [], "baseline": []}
    for _ in range(rounds):
        for side, src in (("baseline", baseline_src), ("version", None)):
            out = subprocess.run(
                [sys.executable, __file__, "--only", "decision", "--models-dir", str(models_dir),
                 "--iterations", str(n)], env=source_env(src), cwd=ROOT, check=True,
                capture_output=True)
            runs[side].append(json.loads(out.stdout)["decision"])
    return {**_decision_summary(runs, n, rounds), "baseline_src": str(baseline_src)}


# -- proxy overhead ----------------------------------------------------------------------------


def proxy_overhead(models_dir: Path, tmp: Path, n: int, rounds: int = 1,
                   baseline_src: Path | None = None) -> dict[str, Any]:
    """p50 of chat through the router minus calling the stub backend directly, over `rounds`
    interleaved rounds of `n` sequential calls, with the decision log durable (the default: the
    reply waits for its fsync) and fast; with `baseline_src` (another checkout's `src`) routers
    from that code are timed in the same rounds, and the ratios reported."""
    stub = Server("stub", models_dir, tmp)
    write_panel(tmp / "panel.yaml", stub.url + "/v1")
    trees = {"version": None} | ({"baseline": baseline_src} if baseline_src else {})
    routers = {f"{tree}.{log}": Server(kind, models_dir, tmp, src=src)
               for tree, src in trees.items()
               for log, kind in (("durable", "route"), ("fast", "route_fast"))}
    chat = {"messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 300}
    runs: dict[str, list[float]] = {"direct": [], **{k: [] for k in routers}}
    try:
        with httpx.Client(timeout=30) as c:
            for _ in range(rounds):
                runs["direct"].append(_sequential(lambda: c.post(
                    stub.url + "/v1/chat/completions",
                    json={**chat, "model": PANEL[0], "logprobs": True, "top_logprobs": 5}), n))
                for name, r in routers.items():
                    runs[name].append(_sequential(lambda r=r: c.post(
                        r.url + "/v1/chat/completions", json={**chat, "model": "confroute:1"}), n))
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
        "calls_per_round": n, "per_round_p50_ms": runs}
    if baseline_src is not None:
        out |= {"baseline_src": str(baseline_src), "ratio_overhead_version_over_baseline": {
            log: round(over[f"version.{log}"] / over[f"baseline.{log}"], 3)
            if over[f"baseline.{log}"] > 0 else None for log in ("durable", "fast")}}
    return out


def _sequential(call: Any, n: int) -> float:
    for _ in range(10):
        call().raise_for_status()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call().raise_for_status()
        samples.append(time.perf_counter() - t0)
    return round(float(np.median(samples)) * 1e3, 2)


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
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, str(args.models_dir), args.tmp, args.workers)
        return
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
