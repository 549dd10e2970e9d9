"""MLflow tracking: the only module that imports mlflow.

Default store: `sqlite:///mlruns/mlflow.db` with artifacts in `mlruns/artifacts` (MLflow 3 refuses
the old `./mlruns` file store). Any other store by `Tracking.uri` in the config or the
`MLFLOW_TRACKING_URI` environment variable. For a SQLite store the experiment's artifact folder
is put beside the database explicitly, so a temporary store keeps everything in one folder.
MLflow records that folder as an absolute path, so a store that moved (the shipped `mlruns/` in
any checkout but the one it was made in) is repointed to its new folder before it is written to
(`relocate`). The explicit `MlflowClient` API is used throughout: no global "active run" state.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
_SQLITE = "sqlite:///"


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: explicit, else MLFLOW_TRACKING_URI, else the local SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, `<db folder>/artifacts` as a file URI; else the server decides."""
    if not uri.startswith(_SQLITE):
        return None
    db = Path(uri[len(_SQLITE):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return (db.parent.resolve() / "artifacts").as_uri()


# where MLflow records artifact paths: table -> column
_PATH_COLUMNS = {"experiments": "artifact_location", "runs": "artifact_uri",
                 "logged_models": "artifact_location", "model_versions": "storage_location"}


def relocate(uri: str) -> int:
    """Repoint a SQLite store that moved: paths recorded under its old folder now name its folder.

    An experiment created here has its artifacts at `<db folder>/artifacts`, and MLflow stores
    that (and every run's artifact URI) as an absolute path: in a checkout elsewhere, new runs
    would write into the old checkout's folder and logged artifacts would not be found. MLflow
    has no call to change an experiment's artifact location, so the recorded paths are rewritten
    in the database, only where they lie under the old folder. Returns the number of values
    changed (0 for a store in place, a new store or any other kind of store).
    """
    if not uri.startswith(_SQLITE):
        return 0
    db = Path(uri[len(_SQLITE):])
    if not db.is_file():
        return 0
    here = db.parent.resolve()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if "experiments" not in tables:
            return 0
        olds = {loc[: -len("/artifacts")] for (loc,) in
                conn.execute("SELECT artifact_location FROM experiments")
                if loc and loc.startswith("file://") and loc.endswith("/artifacts")}
        for old in olds - {here.as_uri()}:
            old_path = unquote(urlparse(old).path)
            for prefix, new in ((old, here.as_uri()), (old_path, str(here))):
                for table, column in _PATH_COLUMNS.items():
                    if table in tables:
                        changed += conn.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (new, len(prefix) + 1, prefix, len(prefix) + 1, prefix + "/"),
                        ).rowcount
    return changed


class Run:
    """One MLflow run, logged to through the client."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, local_dir: str | Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), path)

    def log_artifact(self, local_file: str | Path, path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_file), path)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it (with the artifact folder set) on first use."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location(uri)))


@contextlib.contextmanager
def start_run(
    uri: str | None, experiment: str, run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """A run that ends FINISHED, or FAILED if the block raises."""
    uri = resolve_uri(uri)
    artifact_location(uri)  # a SQLite store's folder must exist before the client opens it
    relocate(uri)
    client = MlflowClient(tracking_uri=uri)
    info = client.create_run(experiment_id(client, experiment, uri), run_name=run_name,
                             tags=dict(tags or {})).info
    try:
        yield Run(client, info.run_id)
    except BaseException:
        client.set_terminated(info.run_id, "FAILED")
        raise
    client.set_terminated(info.run_id, "FINISHED")


def log_evaluation(run_id: str, report: Mapping[str, Any], figures: Sequence[Path],
                   uri: str | None = None) -> str:
    """Add an evaluation report to the version's training run, so runs compare on routing too.

    Metrics `eval.<method>.apgr|cost_50|cost_80` for the router and every baseline, and
    `eval.target.<name>` (1 met, 0 missed); `report.json` and the figures under `evaluation/`.
    Returns what was done, or why nothing was (the run is not in this store).
    """
    uri = resolve_uri(uri)
    relocate(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        return f"not logged: run {run_id} is not in the tracking store {uri}"
    run = Run(client, run_id)
    metrics = {f"eval.{method}.{key}": float(m[key])
               for method, m in report.get("apgr", {}).get("methods", {}).items()
               for key in ("apgr", "cost_50", "cost_80") if _finite(m.get(key))}
    metrics |= {f"eval.target.{name}": float(bool(t["ok"]))
                for name, t in report.get("targets", {}).items()
                if isinstance(t, Mapping) and "ok" in t}
    run.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        run.log_artifact(path, "evaluation")
    for figure in figures:
        run.log_artifact(figure, "evaluation")
    return f"logged to run {run_id}: {len(metrics)} metrics, report.json, {len(figures)} figures"


def flat_metrics(per_model: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`<metric>.<model>` for every numeric metric; `signal_auroc.<signal>.<model>` likewise."""
    out: dict[str, float] = {}
    for model, metrics in per_model.items():
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                out.update({f"{key}.{k}.{model}": float(v) for k, v in value.items()
                            if _finite(v)})
            elif _finite(value):
                out[f"{key}.{model}"] = float(value)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")
