"""Real models: the proxy escalating across llama.cpp servers on loopback, the embedded backend,
and `confroute serve` on its defaults (the main job). Few requests, short answers: CPU is scarce.

llama.cpp's server computes logprobs over the whole vocabulary per token, which costs about
2 s/token for Qwen's 151k vocabulary on 2 busy cores, so these answers are cut at 4-8 tokens.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from support import stop, wait_http_ok

from confroute import modelstore
from confroute.decisions.log import DecisionLog
from confroute.features import FEATURE_NAMES

from .conftest import build_version, free_port, running_service, settings_for, write_panel

pytestmark = pytest.mark.slow
SMALL, MEDIUM = "smollm2-135m", "qwen2.5-coder-0.5b"
QUESTION: Any = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples? "
                                        "End with 'The answer is: N'."}]


@contextmanager
def llama_server(model: str, log: Path) -> Iterator[str]:
    """`python -m llama_cpp.server` for a reference model on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(modelstore.pull(model)),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def two_model_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_version(tmp_path_factory.mktemp("models2"), models=(SMALL, MEDIUM)).parent


def test_escalates_across_real_llama_cpp_servers(tmp_path: Path, two_model_version: Path) -> None:
    with ExitStack() as stack:
        urls = [stack.enter_context(llama_server(m, tmp_path / f"{m}.log")) for m in (SMALL, MEDIUM)]
        for u in urls:
            wait_http_ok(u + "/models", timeout=180)
        panel = write_panel(tmp_path / "panel.yaml", [
            {"name": m, "backend": "openai", "model": m, "base_url": u, "timeout_s": 120,
             "max_retries": 0} for m, u in zip((SMALL, MEDIUM), urls, strict=True)])
        settings = settings_for(tmp_path, two_model_version, panel)
        with running_service(settings) as url:
            client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
            raw = client.chat.completions.with_raw_response.create(
                model="confroute:0", messages=QUESTION, max_tokens=6)
            resp = raw.parse()
    router = resp.model_extra["router"]  # type: ignore[index]
    assert [(t["model"], t["decision"]) for t in router["tried"]] == [
        (SMALL, "escalate"), (MEDIUM, "accept")]
    assert 0.0 <= router["tried"][0]["p_correct"] <= 1.0  # real logprobs were scored
    assert raw.headers["x-confroute-tried"] == f"{SMALL},{MEDIUM}" and resp.choices[0].message.content
    rows = DecisionLog(settings.decision_log, tmp_path / "x.jsonl").read()
    assert [(r.model, r.signals[FEATURE_NAMES[0]]) for r in rows] == [(SMALL, 1.0), (MEDIUM, 1.0)]


def test_embedded_llama_cpp_backend_streams(tmp_path: Path, two_model_version: Path) -> None:
    panel = write_panel(tmp_path / "panel.yaml", [
        {"name": m, "backend": "llamacpp", "model": m, "n_parallel": 2, "n_ctx_per_seq": 512}
        for m in (SMALL, MEDIUM)])
    with running_service(settings_for(tmp_path, two_model_version, panel)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
        chunks = list(client.chat.completions.create(
            model="confroute:0", messages=QUESTION, max_tokens=8, stream=True))
        # a request that cannot fit the context is the caller's error (400), not the backend's
        too_long = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "confroute", "messages": QUESTION, "max_tokens": 600})
        metrics = httpx.get(url + "/metrics").text
    router = chunks[-1].model_extra["router"]  # type: ignore[index]
    assert [t["model"] for t in router["tried"]] == [SMALL, MEDIUM] and router["model"] == MEDIUM
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert too_long.status_code == 400, too_long.text
    assert "exceeds n_ctx_per_seq 512" in too_long.json()["error"]["message"]
    assert "confroute_backend_errors_total{" not in metrics


def test_confroute_serve_starts_on_its_defaults(tmp_path: Path, version_template: Path) -> None:
    """The main job: `confroute serve` with configs/panel.cpu.yaml (embedded llama.cpp)."""
    from .conftest import copy_version

    models = copy_version(version_template, tmp_path / "models")
    port = free_port()
    root = Path(__file__).parents[3]
    cmd = [sys.executable, "-m", "confroute.cli", "serve", "--port", str(port),
           "--models-dir", str(models)]
    env_log = {"CONFROUTE_DECISION_LOG": str(tmp_path / "d.db"),
               "CONFROUTE_SPILL_PATH": str(tmp_path / "spill.jsonl")}
    import os

    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **env_log},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=300)
        resp = client.chat.completions.create(model="confroute:1", messages=QUESTION,
                                              max_tokens=4)
        assert resp.model == SMALL and resp.choices[0].message.content
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown
    assert proc.returncode in (0, -15) and "Application shutdown complete" in out, out[-2000:]
