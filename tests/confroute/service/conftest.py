"""Service fixtures: a real exported model version, panel files, and servers on loopback.

The version is fitted and exported by the training pipeline itself (training.fit +
training.export), so it is exactly what `confroute train` writes. Its policy is set by hand so
the tests know the decisions: λ=0 escalates every answer, λ=1 accepts the cheapest model's,
λ=0.5 compares p_correct with 0.5, λ=0.75 skips the middle model.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import yaml
from support import free_port

from confroute.features import FEATURE_NAMES
from confroute.manifest import PanelInfo, PanelModelInfo
from confroute.policy import PolicyRow, ThresholdPolicy
from confroute.service import create_app
from confroute.settings import Settings
from confroute.traces import Trace, read_traces

from .stub_backend import StubBackend

FIXTURES = Path(__file__).parents[1] / "fixtures"
PANEL = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")  # the CPU reference panel


def known_policy(models: tuple[str, ...] = PANEL) -> ThresholdPolicy:
    """Decisions known in advance (see the module docstring); two or three models."""
    a, b, last = models[0], models[1], models[-1]
    mid = (a, b) if len(models) == 3 else (a,)
    rows = (
        PolicyRow(0.0, models, dict.fromkeys(mid, 1.0), accuracy=0.9, cost=1.5),
        PolicyRow(0.5, models, dict.fromkeys(mid, 0.5), accuracy=0.8, cost=0.8),
        PolicyRow(0.75, (a, last), {a: 0.5}, accuracy=0.7, cost=0.5),
        PolicyRow(1.0, (a,), {}, accuracy=0.3, cost=0.1),
    )
    return ThresholdPolicy(models, rows)


def known_cascade(models: tuple[str, ...] = PANEL) -> dict[str, Any]:
    """A cascade policy with known decisions over the three-model panel:
    - start: the small model, unless the question holds 3 or more numbers (then the large one);
    - λ=0.5: after the small model, accept iff p >= 0.6, else escalate to the medium model
      (worth 0.3, the large one 0.1); after small+medium, the large one is worth 0.2 + 0.2 p;
    - λ=0.8: after the small model, accept iff p >= 0.5, else skip ahead to the large one;
    - fitted accuracy and cost: 0.9 and 0.6 at λ=0.5, 0.8 and 0.4 at λ=0.8."""
    from confroute.cascade import CascadePolicy, CascadeRow, State, state_key

    a, b, c = models

    def row(lam: float, after_a: dict[str, tuple[float, float]], tau: float, accuracy: float,
            cost: float) -> CascadeRow:
        later = {(a,): after_a, (a, b): {c: (0.2, 0.2)}, (b,): {c: (0.2, 0.2)}}
        states = {}
        for called in [(a,), (b,), (c,), (a, b), (a, c), (b, c), (a, b, c)]:
            opts = later.get(called, {})
            t = tau if called == (a,) else (0.2 / (1 - lam - 0.2) if opts else 0.0)
            states[state_key(called)] = State(called, opts, t, 0.3)
        start = {a: (1.0, 0.0, 0.0), b: (0.0, 0.0, 0.0), c: (0.0, 0.0, 0.4)}
        return CascadeRow(lam, start, states, accuracy=accuracy, cost=cost, n_items=10)

    rows = (row(0.5, {b: (0.3, 0.0), c: (0.1, 0.0)}, 0.6, accuracy=0.9, cost=0.6),
            row(0.8, {b: (-0.5, 0.0), c: (0.1, 0.0)}, 0.5, accuracy=0.8, cost=0.4))
    return CascadePolicy(models, rows, {"query_mean": [4.0, 1.0], "prompt_template":
                                        "Solve: {question}"}).to_dict()


def synthetic_rows(n: int, seed: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows whose correctness rises with avg_logprob (so confidence matters)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURE_NAMES)))
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    X[:, col["has_logprobs"]] = 1.0
    X[:, col["avg_logprob"]] = rng.uniform(-2.0, 0.0, n)
    X[:, col["agree_prev"]] = np.nan if first else rng.integers(0, 2, n)
    y = (X[:, col["avg_logprob"]] + rng.normal(0, 0.3, n) > -0.8).astype(int)
    return X, y


def build_version(models_dir: Path, *, models: tuple[str, ...] = PANEL,
                  classifier: str = "logistic", calibration: str = "sigmoid",
                  params: dict[str, Any] | None = None, switch: bool = True,
                  policy: dict[str, Any] | None = None) -> Path:
    """Fit, export and (by default) switch `models_dir/current` to a new version."""
    from training.export import export_version
    from training.fit import CorrectnessClassifier

    fitted, rows = {}, {}
    for i, name in enumerate(models):
        X, y = synthetic_rows(300, i, first=i == 0)
        clf = CorrectnessClassifier(classifier, calibration, params=params, folds=3, n_jobs=1)
        fitted[name], rows[name] = clf.fit(X, y), X[:50]
    panel = PanelInfo(name="test", models=[PanelModelInfo(name=m, cost={"per_call": float(i + 1)})
                                           for i, m in enumerate(models)])
    path, _ = export_version(
        models_dir, fitted, rows, panel=panel, feature_names=FEATURE_NAMES,
        feature_config={"group_window": 16, "tail": 16, "bottom_frac": 0.1},
        policy=policy or known_policy(models).to_dict(), metrics={}, mlflow_run_id=None,
        switch=switch,
    )
    return path


@pytest.fixture(scope="session")
def version_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported version (fitted once per session); copy it with `models_dir`."""
    return build_version(tmp_path_factory.mktemp("models-template"))


@pytest.fixture()
def models_dir(tmp_path: Path, version_template: Path) -> Path:
    """A models directory of its own with the template version as `current`."""
    return copy_version(version_template, tmp_path / "models")


def copy_version(version: Path, models_dir: Path) -> Path:
    import shutil

    from confroute.manifest import switch_current

    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(version, models_dir / version.name)
    switch_current(models_dir, version.name)
    return models_dir


@pytest.fixture(scope="session")
def traces() -> list[Trace]:
    """Real traces (SmolLM2 and Qwen2.5-Coder-0.5B answers with top-5 logprobs)."""
    return read_traces(FIXTURES / "traces_sample.jsonl")


def write_panel(path: Path, models: list[dict[str, Any]], **top: Any) -> Path:
    """A panel YAML with these model entries (openai backends for stubs and servers)."""
    body = {"name": "test", "router_model": "confroute", "decoding": {"max_tokens": 16},
            "models": models, **top}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def stub_panel(path: Path, base_url: str, modes: tuple[str, str, str] = ("ok", "ok", "ok"),
               **per_model: Any) -> Path:
    """The reference panel's names served by the stub backend, each in a scripted mode."""
    models = [{"name": name, "backend": "openai", "model": mode, "base_url": base_url,
               "max_retries": 0, "timeout_s": 5.0, "cost": {"per_call": float(i + 1)},
               **per_model.get(name, {})}
              for i, (name, mode) in enumerate(zip(PANEL, modes, strict=True))]
    return write_panel(path, models)


def settings_for(tmp_path: Path, models_dir: Path, panel: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"decision_log": str(tmp_path / "decisions.db"),
                            "spill_path": tmp_path / "spill.jsonl", "reload_interval_s": 0.2,
                            "log_retry_s": 0.2}
    return Settings(models_dir=models_dir, panel=panel, **(base | kw))


@contextmanager
def serve_app(app: Any, ready_path: str | None = "/healthz") -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server on loopback (own thread); yield its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + (ready_path or "/"), server)
        yield url
    finally:
        server.should_exit = True
        thread.join(20)


def _wait(url: str, server: uvicorn.Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.started:
            try:
                httpx.get(url, timeout=2.0)
                return
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not start in {timeout} s")


@contextmanager
def running_service(settings: Settings) -> Iterator[str]:
    """The confroute app for `settings` under uvicorn on loopback."""
    with serve_app(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def module_models(module_dir: Path, version_template: Path) -> Path:
    """A module's own models directory with the template version as `current`."""
    return copy_version(version_template, module_dir / "models")


def serve_process(tmp: Path, models_dir: Path, port: int, *args: str,
                  **env: str) -> subprocess.Popen[bytes]:
    """`confroute serve` in its own process on `port` (stub panel: /v1/route calls no model),
    its log in tmp/serve.log; `env`: CONFROUTE_* and other variables on top of os.environ."""
    panel = stub_panel(tmp / "panel.yaml", "http://127.0.0.1:9/v1")
    cmd = [sys.executable, "-m", "confroute.cli", "serve", "--port", str(port), "--models-dir",
           str(models_dir), "--panel", str(panel), "--decision-log", str(tmp / "decisions.db"),
           *args]
    full = {**os.environ, "CONFROUTE_SPILL_PATH": str(tmp / "spill.jsonl"),
            "CONFROUTE_LOG_LEVEL": "warning", **env}
    with (tmp / "serve.log").open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full)


@pytest.fixture(scope="module")
def backend() -> StubBackend:
    """The scripted backend behind `stub` (one per test module; its counters add up over it)."""
    return StubBackend()


@pytest.fixture(scope="module")
def stub(backend: StubBackend) -> Iterator[str]:
    """`backend` under uvicorn on loopback: the base URL panels point at."""
    with serve_app(backend, ready_path="/v1/models") as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def cascade_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory serving a version with the known cascade policy."""
    models = tmp_path_factory.mktemp("cascade-models")
    build_version(models, policy=known_cascade())
    return models
