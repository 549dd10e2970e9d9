"""Where a decision log lives: the one reading of its URL (a SQLite file path, `sqlite:///path`
or a `postgresql://` URL) for the stores, the settings, the service's start-up check and the
readers. A leaf module (pathlib only), so settings can use it."""

from __future__ import annotations

from pathlib import Path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> Path | None:
    """The SQLite file of decision-log `url`, None for PostgreSQL; ValueError for anything else
    (another scheme, an empty value)."""
    if url.startswith(POSTGRES_SCHEMES):
        return None
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if "://" in url or not url.strip():
        raise ValueError(f"decision log {url!r}: a SQLite file path or a postgresql:// URL")
    return Path(url)
