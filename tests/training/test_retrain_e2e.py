"""End to end: a served version, real traffic and feedback, `confroute retrain`, hot reload.

The first version is trained by the pipeline on the first items of the real reference traces;
the other items are sent to a real uvicorn server as /v1/route requests (their real tokens),
cascading as the decisions say (every 4th request is an audit that calls every panel model, the
/v1/route client's form of exploration), and every request gets its gold answer as feedback.
Then `confroute retrain` runs on the service's own decision log while a thread keeps routing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from confroute.cli import app as cli
from confroute.manifest import Manifest, resolve_current
from confroute.panel import load_panel
from confroute.service import create_app
from confroute.settings import Settings
from confroute.traces import Trace, read_traces, write_traces
from training.config import TrainConfig
from training.inrows import labeled_table, log_rows, read_log
from training.train import split_items, train

ROOT = Path(__file__).resolve().parents[2]
# GSM8K test, the set the gate margins below were sized on: with the whole folder the first items
# are whichever set sorts first (AddSub since 2026-12-02), and on 12 easy AddSub items the
# first version and the candidate differ by less than the noise of a few dozen held-out rows
REFERENCE = Path(os.environ.get("CONFROUTE_REFERENCE_TRACES",
                                ROOT / "data/reference-traces/gsm8k_test.traces.npz"))
FIRST_ITEMS = 12  # the first version's training items (a router deployed on little data)
MIN_ITEMS = 80  # a panel model needs traces for this many items to take part
MAX_TRAFFIC = 100  # requests sent (items after the first version's)
AUDIT_EVERY = 4  # every 4th request calls every panel model: full cascades for the utility
LAMBDAS = (0.0, 0.0, 0.5)  # clients' cost_quality_tradeoff, alternating (0: mostly full cascades)
# small data: logistic + Platt (stable on a few dozen rows, and fast)
TRAIN: dict[str, Any] = {"classifier": "logistic", "calibration": "sigmoid", "folds": 3,
                         "bootstrap": 0, "figures": False}
# a held-out slice of a few dozen rows per model: half the requests, margins sized to its noise
GATE: dict[str, Any] = {"min_labeled_rows": 10, "min_eval_rows": 10, "max_auroc_drop": 0.05,
                        "max_brier_increase": 0.02}


def reference_traces() -> list[Trace]:
    """The finished reference traces, else the ones being generated (var/traces)."""
    for source in (REFERENCE, ROOT / "var/traces"):
        traces = read_traces(source) if source.exists() else []
        if traces:
            return traces
    return []


@dataclass
class Traffic:
    url: str
    log: Path
    models_dir: Path
    config: Path
    first: str  # the version served first
    snapshot: Path  # log and models folder copied before any retrain
    models: list[str]
    reference: Path  # the first version's training traces
    probe: dict[str, Any]  # a /v1/route body


def _panel(path: Path, models: list[str]) -> Path:
    """The CPU panel's names and prices, limited to the models that have enough traces."""
    cpu = load_panel(ROOT / "configs/panel.cpu.yaml")
    body = {"name": "retrain-e2e", "router_model": "confroute",
            "models": [{"name": m, "cost": cpu.get(m).cost.model_dump()} for m in models]}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def _config(path: Path, panel: Path, tmp: Path, reference: Path) -> Path:
    body = {"train": {"panel": str(panel), "traces": [str(reference)], **TRAIN, "test_size": 0.5,
                      "tracking": {"uri": f"sqlite:///{tmp}/mlruns/mlflow.db"}}, "gate": GATE}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def _by_item(traces: list[Trace], models: list[str]) -> dict[str, dict[str, Trace]]:
    """Items answered by every model, in natural order (gsm8k/test/2 before gsm8k/test/10)."""
    per: dict[str, dict[str, Trace]] = defaultdict(dict)
    for t in traces:
        per[t.item_id][t.model] = t
    order = sorted(per, key=lambda i: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", i)])
    return {i: per[i] for i in order if all(m in per[i] for m in models)}


def _first_version(items: dict[str, dict[str, Trace]], panel: Path, models_dir: Path,
                   tmp: Path) -> tuple[str, Path]:
    """The pipeline's version on the first FIRST_ITEMS items (models/current), and those traces."""
    reference = tmp / "reference" / "first.jsonl"
    write_traces(reference, [t for i in list(items)[:FIRST_ITEMS] for t in items[i].values()])
    config = TrainConfig(panel=panel, traces=[reference], models_dir=models_dir, **TRAIN,
                         tracking={"uri": f"sqlite:///{tmp}/mlruns/mlflow.db"})
    return train(config).version_dir.name, reference


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The service under a real uvicorn server on loopback, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started or httpx.get(url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(20)


def route_body(t: Trace, previous: list[Trace], rid: str, lam: float) -> dict[str, Any]:
    """A /v1/route request with the trace's real tokens, as a client would send it."""
    return {"model": t.model, "tokens": msgspec.to_builtins(t.tokens), "response": t.response,
            "finish_reason": t.finish_reason, "usage": msgspec.to_builtins(t.usage),
            "previous": [p.response for p in previous], "request_id": rid,
            "cost_quality_tradeoff": lam}


def cascade(client: httpx.Client, rid: str, per_model: dict[str, Trace], models: list[str],
            lam: float, audit: bool) -> None:
    """One request through the cascade (call `next_model` while told to; an audit calls every
    model, as a shadow evaluation would), then its gold answer as feedback."""
    called: list[Trace] = []
    model: str | None = models[0]
    while model is not None:
        r = client.post("/v1/route", json=route_body(per_model[model], called, rid, lam))
        assert r.status_code == 200, r.text
        called.append(per_model[model])
        model = dict(itertools.pairwise(models)).get(model) if audit else r.json()["next_model"]
    gold = str(per_model[models[0]].gold)
    assert client.post("/v1/feedback", json={"request_id": rid, "gold": gold}).status_code == 200


def wait_labeled(log: Path, n_requests: int, timeout: float = 30.0) -> None:
    """Until the log holds every request, each stage graded by its gold answer."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_log(str(log)) if log.exists() else []
        if len({d.request_id for d in rows}) == n_requests and all(d.correct is not None
                                                                  for d in rows):
            return
        assert time.monotonic() < deadline, "the decision log did not take every label"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    traces = reference_traces()
    counts = Counter(t.model for t in traces)
    cpu = load_panel(ROOT / "configs/panel.cpu.yaml")
    models = [m for m in cpu.names if counts[m] >= MIN_ITEMS]
    if not models:
        pytest.skip(f"no reference traces with >= {MIN_ITEMS} items in {REFERENCE} or var/traces")
    tmp = tmp_path_factory.mktemp("retrain-e2e")
    panel, models_dir, log = _panel(tmp / "panel.yaml", models), tmp / "models", tmp / "decisions.db"
    items = _by_item(traces, models)
    first, reference = _first_version(items, panel, models_dir, tmp)
    settings = Settings(models_dir=models_dir, panel=panel, decision_log=str(log),
                        spill_path=tmp / "spill.jsonl", reload_interval_s=0.2)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        traffic_items = list(items)[FIRST_ITEMS : FIRST_ITEMS + MAX_TRAFFIC]
        for k, item in enumerate(traffic_items):
            per = items[item]
            cascade(client, f"req-{k:04d}", per, models, LAMBDAS[k % len(LAMBDAS)],
                    audit=k % AUDIT_EVERY == AUDIT_EVERY - 1)
        wait_labeled(log, len(traffic_items))
        snapshot = tmp / "snapshot"
        snapshot.mkdir()
        with sqlite3.connect(log) as src, sqlite3.connect(snapshot / "decisions.db") as dst:
            src.backup(dst)
        shutil.copytree(models_dir, snapshot / "models", symlinks=True)
        probe = route_body(items[next(iter(items))][models[0]], [], "probe", 0.5)
        yield Traffic(url, log, models_dir, _config(tmp / "retrain.yaml", panel, tmp, reference),
                      first, snapshot, models, reference, probe)


@contextmanager
def hammering(url: str, body: dict[str, Any]) -> Iterator[tuple[list[str], Counter[str]]]:
    """Keep sending /v1/route from a thread; yields the failures and the versions that answered."""
    failures: list[str] = []
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/route", json=body)
                except httpx.HTTPError as exc:  # a dropped connection or timeout is a failure
                    failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    versions[r.json()["version"]] += 1
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield failures, versions
    finally:
        stop.set()
        thread.join(30)


def run_retrain(log: Path, config: Path, models_dir: Path, *extra: str) -> Any:
    args = ["retrain", "--log", str(log), "--config", str(config), "--models-dir", str(models_dir)]
    return CliRunner().invoke(cli, [*args, *extra], env={"COLUMNS": "160"})


def test_retrain_promotes_and_the_running_service_serves_it(traffic: Traffic) -> None:
    with hammering(traffic.url, traffic.probe) as (failures, versions):
        dry = run_retrain(traffic.log, traffic.config, traffic.models_dir, "--dry-run",
                          "--mix-reference")
        assert dry.exit_code == 0, dry.output
        assert "nothing written" in dry.output
        assert sorted(p.name for p in traffic.models_dir.iterdir()) == ["current", traffic.first]
        result = run_retrain(traffic.log, traffic.config, traffic.models_dir, "--mix-reference")
        print(result.output)
        assert result.exit_code == 0, result.output
        new = resolve_current(traffic.models_dir).name
        assert new != traffic.first and f"promoted {new}" in result.output
        deadline = time.monotonic() + 20
        while httpx.get(traffic.url + "/v1/models").json()["data"][0]["version"] != new:
            assert time.monotonic() < deadline, "the service did not reload the new version"
            time.sleep(0.1)
        time.sleep(0.3)  # a few requests on the new version
    assert failures == []
    assert versions[traffic.first] > 0 and versions[new] > 0
    assert httpx.post(traffic.url + "/v1/route", json=traffic.probe).json()["version"] == new
    _check_runs(traffic, new)


def _check_runs(traffic: Traffic, new: str) -> None:
    """One candidate and one current run in the retrain experiment; the manifest names its run."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{traffic.log.parent}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("confroute-retrain")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.gate = 'passed'")
    assert len(runs) == 1 and runs[0].data.tags["role"] == "candidate"
    cand = runs[0].data
    assert cand.tags["version"] == new and cand.tags["promoted"] == "True"
    assert Manifest.load(traffic.models_dir / new).mlflow_run_id == runs[0].info.run_id
    cur = client.get_run(cand.tags["compared_with"]).data
    assert cur.tags == cur.tags | {"role": "current", "version": traffic.first}
    assert {k for k in cand.metrics if k.startswith("brier.")} == \
        {k for k in cur.metrics if k.startswith("brier.")} == {f"brier.{m}" for m in traffic.models}
    # the promoted candidate is a registered version, and the champion (training/registry.py)
    champion = client.get_model_version_by_alias("confroute", "champion")
    assert champion.tags["confroute.version"] == new
    assert cand.tags["registered"] == f"models:/confroute/{champion.version}"


def test_drift_on_the_service_log(traffic: Traffic, tmp_path: Path) -> None:
    """The served version's p_correct and calibration on the logged traffic vs its training data."""
    out = tmp_path / "drift.json"
    args = ["drift", "--log", str(traffic.snapshot / "decisions.db"), "--reference",
            str(traffic.reference), "--out", str(out), "--models-dir",
            str(traffic.snapshot / "models")]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["version"] == traffic.first and report["models"]
    assert set(report["models"]) <= set(traffic.models)  # the models the cascades called
    for m in report["models"].values():
        assert any(r["signal"] == "p_correct" and r["n_recent"] for r in m["signals"])
        assert m["calibration"]["n_labeled"] == m["n_recent"]  # gold feedback on every request


def _flip_training_labels(log: Path, config: Path) -> None:
    """A broken labeler: every training-side label inverted, the held-out slice left true."""
    from training.retrain import load_retrain_config

    cfg = load_retrain_config(config).train
    rows = labeled_table(log_rows(read_log(str(log)), load_panel(cfg.panel)))
    test = split_items(rows["item_id"], cfg.test_size, cfg.seed)
    train_ids = sorted(set(rows.loc[~test, "item_id"]))
    with sqlite3.connect(log) as db:
        db.executemany("UPDATE feedback SET correct = 1 - correct WHERE request_id = ?",
                       [(i,) for i in train_ids])


def test_gate_refuses_a_worse_candidate_and_current_stays(traffic: Traffic, tmp_path: Path) -> None:
    log, models_dir = tmp_path / "decisions.db", tmp_path / "models"
    shutil.copy(traffic.snapshot / "decisions.db", log)
    shutil.copytree(traffic.snapshot / "models", models_dir, symlinks=True)
    _flip_training_labels(log, traffic.config)
    result = run_retrain(log, traffic.config, models_dir)
    assert result.exit_code == 1, result.output
    assert f"models/current stays {traffic.first}" in result.output
    assert "worse" in result.output
    assert resolve_current(models_dir).name == traffic.first
    assert sorted(p.name for p in models_dir.iterdir()) == ["current", traffic.first]
    from mlflow import MlflowClient  # the refused candidate is registered as the challenger

    client = MlflowClient(f"sqlite:///{traffic.log.parent}/mlruns/mlflow.db")
    challenger = client.get_model_version_by_alias("confroute", "challenger")
    assert client.get_run(challenger.run_id).data.tags["gate"] == "refused"
