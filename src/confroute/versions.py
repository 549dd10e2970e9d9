"""Router versions: a verified version directory loaded (scorer + policy), the one served, and
hot reload.

A version is loaded only after `confroute.manifest.verify` and `Scorer.load` succeed and its
panel matches the configured one; `Versions` then swaps one reference, so a request sees either
the old version or the new one, never a mix. A watcher polls `models/current` (symlink target and
the manifest's mtime); a version that fails to load is refused, logged and reported by /healthz,
and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confroute.errors import NotReady
from confroute.features import FeatureConfig, warm_up
from confroute.manifest import MANIFEST, Manifest, ManifestError
from confroute.panel import Panel
from confroute.policies import load_policy
from confroute.policy_api import FittedPolicy
from confroute.scoring import Scorer

log = logging.getLogger("confroute.service")


@dataclass(frozen=True)
class RouterVersion:
    """One verified model version: its scorer, policy and feature settings."""

    path: Path
    version: str
    scorer: Scorer
    policy: FittedPolicy
    config: FeatureConfig
    models: tuple[str, ...]
    loaded_at: float = field(default_factory=time.time)


def check_grader(setting: str | None, manifest: Manifest) -> None:
    """ManifestError when a grader setting names another grader than the version was trained
    with: its answer_* and agree_prev signals would be computed differently from what its
    classifiers learned."""
    if setting is not None and setting != manifest.grader:
        raise ManifestError(
            f"CONFROUTE_GRADER={setting} conflicts with version {manifest.version}, whose signals "
            f"were computed with the {manifest.grader!r} grader; unset it or retrain")


def load_version(path: Path, panel: Panel | None, grader: str | None = None) -> RouterVersion:
    """Verify and load a version directory; ManifestError (or ValueError) says why it is refused."""
    scorer = Scorer.load(path)
    manifest = scorer.manifest
    check_grader(grader, manifest)
    if manifest.policy is None:
        raise ManifestError(f"version {manifest.version} has no policy table; retrain it")
    policy = load_policy(manifest.policy)
    models = tuple(scorer.models)
    if panel is not None and [m for m in panel.names if m in models] != list(models):
        raise ManifestError(
            f"version {manifest.version} was trained for panel {list(models)}, but the configured "
            f"panel {panel.name!r} has {panel.names}"
        )
    config = manifest.feature_config.config()
    warm_up()
    return RouterVersion(path, manifest.version, scorer, policy, config, models)


def current_key(models_dir: Path) -> tuple[str, int] | None:
    """What identifies the served version on disk: `current`'s target and its manifest's mtime."""
    target = models_dir if (models_dir / MANIFEST).is_file() else models_dir / "current"
    try:
        real = os.path.realpath(target)
        return real, os.stat(os.path.join(real, MANIFEST)).st_mtime_ns
    except OSError:
        return None


class Versions:
    """The served version of a models directory: load, refuse, reload, watch."""

    def __init__(self, models_dir: Path, panel: Panel | None, grader: str | None = None,
                 on_load: Callable[[RouterVersion], None] | None = None) -> None:
        self.models_dir, self.panel, self._grader = models_dir, panel, grader
        self._on_load = on_load
        self.current: RouterVersion | None = None
        self.last_error: str | None = None
        self._key: tuple[str, int] | None = None
        self._failed_key: tuple[str, int] | None = None

    def reload(self) -> RouterVersion:
        """Load what `models/current` points at and swap it in; raise (keeping the old) if bad."""
        key = current_key(self.models_dir)
        if key is None:
            self.last_error = f"no model version at {self.models_dir}/current"
            raise ManifestError(self.last_error + ": train one (confroute train)")
        try:
            new = load_version(Path(key[0]), self.panel, self._grader)
        except Exception as exc:  # whatever breaks loading (onnxruntime too) refuses the version
            self._failed_key = key
            self.last_error = f"refused version at {key[0]}: {exc}"
            log.error("%s; still serving %s", self.last_error, self.version or "nothing")
            raise ManifestError(self.last_error) from exc
        self.current, self._key, self.last_error = new, key, None
        if self._on_load is not None:
            self._on_load(new)
        log.info("serving model version %s from %s", new.version, new.path)
        return new

    def changed(self) -> bool:
        """Whether `models/current` differs from what is loaded (and was not just refused)."""
        key = current_key(self.models_dir)
        return key is not None and key != self._key and key != self._failed_key

    async def watch(self, interval_s: float,
                    on_reload: Callable[[RouterVersion], None] | None = None) -> None:
        """Poll for a new version every `interval_s` and load it off the event loop."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                try:
                    new = await asyncio.to_thread(self.reload)
                except (ManifestError, ValueError, OSError):
                    continue  # refused and logged; the old version keeps serving
                if on_reload is not None:
                    on_reload(new)

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    def require(self) -> RouterVersion:
        """The served version, or 503 while none is loaded."""
        v = self.current
        if v is None:
            raise NotReady(f"no verified model version is loaded ({self.last_error or 'loading'})")
        return v

