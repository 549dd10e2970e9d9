"""Versions from the MLflow Model Registry (confroute/registry.py, training/registry.py): two
running instances serve `models:/confroute@champion` from a SQLite-backed store, follow a
promotion of the alias, and keep serving when it moves to a version that fails verification."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from support import wait_for

from confroute.manifest import MANIFEST
from confroute.registry import parse
from confroute.service import create_app
from training import registry as reg

from .conftest import build_version, serve_app, settings_for, stub_panel


def _logged(client: MlflowClient, version_dir: Path) -> str:
    """A run holding the version's files under model/, as `confroute train` logs them."""
    exp = client.get_experiment_by_name("t") or client.get_experiment(client.create_experiment("t"))
    run = client.create_run(exp.experiment_id)
    client.log_artifacts(run.info.run_id, str(version_dir), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _serving(url: str) -> str | None:
    return httpx.get(f"{url}/healthz", timeout=10).json().get("version")


def test_two_instances_follow_a_promotion_and_refuse_a_bad_version(
    tmp_path: Path, stub: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    scratch = tmp_path / "built"
    v1 = build_version(scratch, switch=False)
    v2 = build_version(scratch, classifier="logistic", calibration="isotonic", switch=False)
    v3 = build_version(scratch, classifier="logistic", calibration="sigmoid",
                       params={"C": 0.05}, switch=False)
    assert len({v1.name, v2.name, v3.name}) == 3
    bad = tmp_path / "bad" / v3.name
    shutil.copytree(v3, bad)
    next(bad.glob("*.onnx")).write_bytes(b"tampered")  # its manifest's hash no longer holds
    numbers = [reg.register(uri, "confroute", _logged(client, d), d.name) for d in (v1, v2, bad)]
    assert numbers == [1, 2, 3]
    reg.set_alias(uri, "confroute", reg.CHAMPION, 1)

    panel = stub_panel(tmp_path / "panel.yaml", stub)
    apps = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        apps.append(create_app(settings_for(
            tmp_path / name, tmp_path / name / "models", panel, version="models:/confroute@champion",
            follow_alias=True, follow_interval_s=0.3)))
    with serve_app(apps[0]) as a, serve_app(apps[1]) as b:
        assert _serving(a) == _serving(b) == v1.name  # fetched, verified, served at start
        t0 = time.monotonic()
        reg.set_alias(uri, "confroute", reg.CHAMPION, 2)  # a promotion
        wait_for(lambda: _serving(a) == _serving(b) == v2.name, timeout=10)
        followed = time.monotonic() - t0
        assert followed < 5.0, followed  # poll 0.3 s + hot reload 0.2 s, with room
        reg.set_alias(uri, "confroute", reg.CHAMPION, 3)  # a version whose files were changed
        time.sleep(1.5)
        assert _serving(a) == _serving(b) == v2.name  # refused: the old one keeps serving
        for name in ("a", "b"):
            models = tmp_path / name / "models"
            assert not [p for p in models.iterdir() if p.name.startswith(".fetch-")]
            assert (models / "current").resolve().name == v2.name
            assert not (models / v3.name).exists()  # never moved in, never switched to
            assert (models / "current" / MANIFEST).is_file()


def test_registry_uris_and_the_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from confroute.registry import DEFAULT_STORE, store
    from training.tracking import resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store() == resolve_uri() == DEFAULT_STORE  # serve reads where train writes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert store() == resolve_uri() == "sqlite:////x/y.db"
    assert parse("models:/confroute@champion").alias == "champion"
    assert parse("models:/my.router/7").number == 7
    for bad in ("models:/confroute", "runs:/abc/model", "models:/a/b/c"):
        with pytest.raises(ValueError, match="models:/NAME/NUMBER or models:/NAME@ALIAS"):
            parse(bad)


def test_a_store_that_is_not_there_is_an_error_not_a_new_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from confroute.manifest import ManifestError
    from confroute.registry import resolve

    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    with pytest.raises(ManifestError, match="no MLflow store"):
        resolve(parse("models:/confroute@champion"))
    assert not missing.parent.exists()
