"""Router versions from the MLflow Model Registry: `confroute serve --version
models:/confroute@champion` (or `models:/NAME/N`) downloads the registered version's files into
the models directory, verifies every hash (confroute.manifest.verify) and points `current` at
it; with `--follow-alias` each instance polls the alias and, when a promotion moves it, fetches
and verifies the new version and switches `current`, which the hot reload (versions.py) picks
up. A version that fails to download or verify is refused and logged: the old one keeps serving.

`confroute train` and `retrain` register what they export (training/registry.py); the retrain
gate moves `champion` to a promoted candidate and `challenger` to one that lost. The registry
is MLflow's, in the tracking store `MLFLOW_TRACKING_URI` names, else `DEFAULT_STORE`, the one
`confroute train` writes by default; mlflow is imported only here and only when a registry URI
is given, so the runtime needs it only then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from confroute.manifest import MANIFEST, ManifestError, switch_current, verify

log = logging.getLogger("confroute.service")
DEFAULT_STORE = "sqlite:///mlruns/mlflow.db"  # training/tracking.py's default too
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<number>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class RegistryRef:
    """A registered version, by number or by alias."""

    name: str
    number: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.number}" if self.number is not None else \
            f"models:/{self.name}@{self.alias}"


def parse(uri: str) -> RegistryRef:
    """`models:/NAME/N` or `models:/NAME@ALIAS`; ValueError saying which forms there are."""
    m = _URI.match(uri.strip())
    if m is None:
        raise ValueError(f"{uri!r}: a registry version is models:/NAME/NUMBER or "
                         "models:/NAME@ALIAS (e.g. models:/confroute@champion)")
    number = m.group("number")
    return RegistryRef(m.group("name"), int(number) if number else None, m.group("alias"))


def store(tracking_uri: str | None = None) -> str:
    """The tracking store: given, else MLFLOW_TRACKING_URI, else DEFAULT_STORE."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE


def _client(tracking_uri: str | None) -> object:
    """The registry's client; a SQLite store that does not exist is an error here, not a new
    empty store (a server only reads the registry)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ManifestError("serving from the MLflow registry needs mlflow: pip install "
                            "'confroute[train]'") from None
    uri = store(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ManifestError(f"no MLflow store at {uri} (MLFLOW_TRACKING_URI): nothing to serve "
                            "from its registry")
    return MlflowClient(uri)


def resolve(ref: RegistryRef, tracking_uri: str | None = None) -> int:
    """The version number a reference names now (an alias moves with promotions)."""
    if ref.number is not None:
        return ref.number
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(ref.name, ref.alias)  # type: ignore[attr-defined]
    except Exception as exc:  # MlflowException: no such model or alias, store unreachable
        raise ManifestError(f"{ref.uri}: {exc}") from None
    return int(mv.version)


def fetch(ref: RegistryRef, models_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Download registered version `ref` (by number; resolve an alias first) into models_dir,
    verify every file's hash, and return its directory (models_dir/<version id>). Nothing is
    left behind in models_dir when the download or the check fails."""
    from mlflow.artifacts import download_artifacts

    _client(tracking_uri)  # mlflow is there, or a clear error
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    number = resolve(ref, tracking_uri)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".fetch-") as tmp:
        try:
            got = Path(download_artifacts(artifact_uri=f"models:/{ref.name}/{number}",
                                          dst_path=tmp, tracking_uri=store(tracking_uri)))
        except Exception as exc:  # an unreachable store, a version without files
            raise ManifestError(f"models:/{ref.name}/{number}: download failed: {exc}") from None
        if not (got / MANIFEST).is_file():
            raise ManifestError(f"models:/{ref.name}/{number} holds no {MANIFEST}: not a "
                                "confroute version")
        verify(got)  # every file's sha256 against the manifest: ManifestError otherwise
        version_id = json.loads((got / MANIFEST).read_text(encoding="utf-8"))["version"]
        dest = models_dir / str(version_id)
        if not dest.exists():
            shutil.move(str(got), dest)
    return dest


def serve_from(ref: RegistryRef, models_dir: str | Path, tracking_uri: str | None = None
               ) -> tuple[int, Path]:
    """Fetch `ref` and make it `current`: (its number, its directory)."""
    number = resolve(ref, tracking_uri)
    path = fetch(RegistryRef(ref.name, number), models_dir, tracking_uri)
    switch_current(models_dir, path.name)
    return number, path


async def follow(ref: RegistryRef, models_dir: str | Path, interval_s: float,
                 tracking_uri: str | None = None, number: int | None = None) -> None:
    """Poll the alias every `interval_s`; when it names another version, fetch, verify and
    switch `current` to it (the hot reload serves it). A failure is logged and retried at the
    next poll; the version being served stays."""
    failed: int | None = None
    while True:
        await asyncio.sleep(interval_s)
        try:
            now = await asyncio.to_thread(resolve, ref, tracking_uri)
        except ManifestError as exc:
            log.error("%s: %s; still serving version %s", ref.uri, exc, number)
            continue
        if now in (number, failed):
            continue
        try:
            _, path = await asyncio.to_thread(serve_from, RegistryRef(ref.name, now),
                                              models_dir, tracking_uri)
        except (ManifestError, OSError, ValueError) as exc:
            failed = now  # refused once, logged once; a later promotion is tried again
            log.error("%s moved to version %d, refused: %s; still serving version %s",
                      ref.uri, now, exc, number)
            continue
        number, failed = now, None
        log.info("%s moved to version %d (%s): serving it", ref.uri, now, path.name)
