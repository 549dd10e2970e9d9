"""Shared fixtures: the reference SmolLM2 GGUF and a real llama.cpp server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import stop

from confroute import modelstore

SERVER_START_S = 120.0  # loading the 98 MB GGUF takes a few seconds on 2 busy cores
NO_SKIPS = os.environ.get("CONFROUTE_NO_SKIPS") == "1"  # set by scripts/test.sh (and so by CI)
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under CONFROUTE_NO_SKIPS=1 a skipped test fails the run: CI must check everything."""
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.section("skipped under CONFROUTE_NO_SKIPS=1: the run fails", red=True)
        for line in _skipped:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The verified SmolLM2-135M GGUF from the model cache (pulled on first use)."""
    return modelstore.pull("smollm2-135m")


@pytest.fixture(scope="module")
def llama_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` serving SmolLM2 on a free loopback port; yields its /v1 URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(proc, base_url, log)
        yield base_url
    finally:
        stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    """Poll /v1/models until it answers; fail with the server's log if it dies or never does."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{base_url}/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"llama.cpp server not ready after {SERVER_START_S:g} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]
