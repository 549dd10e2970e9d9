"""The bench's servers, each run in its own process (`python bench/servers.py --serve KIND`), and
the trace they serve: shared by bench/service.py's throughput, decision and proxy parts."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
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


# -- servers (each run as `python bench/servers.py --serve KIND`) ------------------------------


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


async def drain(receive: Any) -> None:
    """Read (and drop) an ASGI request's body: the bench's apps answer without looking at it."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)


def stub_backend(body: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await drain(receive)
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
        uvicorn.run("servers:bench_factory", factory=True, host="127.0.0.1", port=port,
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
    elif kind.startswith("floor_"):  # floor_hop, floor_decode: see floor_proxies.py
        from floor_proxies import floor_proxy

        app = floor_proxy(kind.removeprefix("floor_"), Path(tmp) / "panel.yaml")
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




if __name__ == "__main__":
    p = argparse.ArgumentParser(description="one bench server (started by Server)")
    p.add_argument("--serve", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--tmp", required=True)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    serve(a.serve, a.port, a.models_dir, a.tmp, a.workers)
