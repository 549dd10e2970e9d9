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

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from confroute.registry import DEFAULT_STORE

DEFAULT_URI = DEFAULT_STORE  # the registry's reader (confroute/registry.py) defaults to it too
_SQLITE = "sqlite:///"


def resolve_uri(uri: str | None = None, fallback: str | None = None) -> str:
    """The tracking URI: explicit, else MLFLOW_TRACKING_URI, else `fallback` (a version's own
    store), else the local SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or fallback or DEFAULT_URI


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store's URI (None: another kind of store)."""
    return Path(uri[len(_SQLITE):]) if uri.startswith(_SQLITE) else None


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, `<db folder>/artifacts` as a file URI; else the server decides."""
    db = _sqlite_file(uri)
    if db is None:
        return None
    db.parent.mkdir(parents=True, exist_ok=True)
    return (db.parent.resolve() / "artifacts").as_uri()


# set on experiments whose artifacts confroute put beside a SQLite database: the ones `relocate`
# may repoint when the store moves (an artifact location a user chose is never touched)
BESIDE_DB_TAG = "confroute.artifacts_beside_db"


def relocate(uri: str) -> int:
    """Repoint a SQLite store that moved: its experiments' artifacts are beside it again.

    confroute creates an experiment with its artifacts at `<db folder>/artifacts` (tagged
    BESIDE_DB_TAG), and MLflow stores that, and every run's artifact URI, as an absolute path: in
    a checkout elsewhere new runs would write into the old checkout's folder and logged artifacts
    would not be found. MLflow has no call to change an experiment's artifact location, so for
    tagged experiments the recorded paths under the old folder are rewritten in the database.
    Returns the number of values changed (0 for a store in place, a new store, any other store).
    """
    db = _sqlite_file(uri)
    if db is None or not db.is_file():
        return 0
    want = (db.parent.resolve() / "artifacts").as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if not {"experiments", "experiment_tags", "runs"} <= tables:
            return 0
        moved = conn.execute(
            "SELECT e.experiment_id, e.artifact_location FROM experiments e JOIN experiment_tags t "
            "ON t.experiment_id = e.experiment_id WHERE t.key = ? AND e.artifact_location != ?",
            (BESIDE_DB_TAG, want)).fetchall()
        for exp_id, old in moved:
            changed += conn.execute("UPDATE experiments SET artifact_location = ? "
                                    "WHERE experiment_id = ?", (want, exp_id)).rowcount
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                if table in tables:
                    changed += conn.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                        (want, len(old) + 1, exp_id, len(old) + 1, old + "/")).rowcount
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
    location = artifact_location(uri)
    tags = {BESIDE_DB_TAG: "true"} if location else None
    return str(client.create_experiment(name, artifact_location=location, tags=tags))


class TrackingError(ValueError):
    """The MLflow store cannot be opened or written (not a database, a bad URI, unreachable)."""


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """MLflow's and sqlite3's errors on opening or writing the store `uri`, as one TrackingError
    naming it (they were tracebacks)."""
    try:
        yield
    except (sqlite3.Error, MlflowException, OSError) as exc:
        raise TrackingError(f"MLflow tracking store {uri}: {type(exc).__name__}: {exc}; set "
                            "MLFLOW_TRACKING_URI (or the config's tracking.uri) to a working "
                            "store") from None


@contextlib.contextmanager
def start_run(
    uri: str | None, experiment: str, run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """A run that ends FINISHED, or FAILED if the block raises."""
    uri = resolve_uri(uri)
    with store_errors(uri):
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
                   store: str | None = None) -> str:
    """Add an evaluation report to the version's training run, so runs compare on routing too:
    in $MLFLOW_TRACKING_URI where it is set (the user's explicit choice), else in `store` (the
    store the version's manifest names), else the default store.

    Metrics `eval.<method>.apgr|cost_50|cost_80` for the router and every baseline, and
    `eval.target.<name>` (1 met, 0 missed); `report.json` and the figures under `evaluation/`.
    Returns what was done, or why nothing was (the run is not in this store).
    """
    uri = resolve_uri(None, store)
    db = _sqlite_file(uri)
    if db is not None and not db.is_file():
        # opening it would create an empty store (a stray mlruns/mlflow.db) holding no such run
        return f"not logged: the tracking store {uri} does not exist here (run {run_id})"
    with store_errors(uri):
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
