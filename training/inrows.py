"""The service's decision log -> in-domain feature rows, labeled by feedback where there is any.

Each logged decision carries the signals the service computed at decision time (FEATURE_NAMES
order), so a row needs no trace and no recomputation: what was served is what is learned from.
One row per (request, model); when a request logged a model twice, the last decision counts.
Decisions with `decision == "error"` (a backend that failed) have no answer and are left out.
A row is labeled only when feedback joined it (`correct` true/false), or when another stage of
its request got a gold answer and the row was logged after that feedback (an exploration stage
that finished late): it is then graded with that gold answer, as the service grades every stage.
Unlabeled rows are counted, never guessed. Cost: the panel's per-call price plus its
completion-token price times the logged `length` signal; the log has no prompt-token count, so
prompt-token prices are left out.

Selection bias is the reason for `label_counts`' per-decision columns: see training/retrain.py.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
import time
from collections.abc import Sequence

import msgspec
import numpy as np
import pandas as pd

from confroute.decisions.location import sqlite_path
from confroute.decisions.records import SHADOW_SUFFIX, LoggedDecision, logged_cost, logged_tokens
from confroute.decisions.store import open_store
from confroute.features import FEATURE_NAMES
from confroute.grading import Grader
from confroute.panel import Panel
from training.table import META_COLUMNS
from training.train import Dataset, split_items

LOG_SOURCE = "log"
REFERENCE_PREFIX = "reference:"  # reference item ids, kept apart from request ids
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class LogError(ValueError):
    """A decision log that cannot be read as asked (missing file, unknown version, bad --since)."""


def parse_since(spec: str | None, now: float | None = None) -> float | None:
    """Unix seconds from `24h` / `7d` (ago), unix seconds, or an ISO 8601 time (naive = UTC)."""
    if spec is None or not spec.strip():
        return None
    now = time.time() if now is None else now
    if m := _DURATION.match(spec):
        return now - float(m.group(1)) * _SECONDS[m.group(2)]
    try:
        seconds = float(spec)
    except ValueError:
        pass
    else:  # nan, inf and 1e400 gave an empty report without a word
        if not math.isfinite(seconds):
            raise LogError(f"--since {spec!r}: not a time (give unix seconds, an ISO time or 24h)")
        return seconds
    try:
        when = dt.datetime.fromisoformat(spec.strip())
    except ValueError:
        raise LogError(f"--since {spec!r}: give an ISO time (2026-11-23T04:00), unix seconds, "
                       f"or a duration such as 24h or 7d") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def redact(url: str) -> str:
    """A database URL without its password (for messages and MLflow params)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def read_log(url: str, since: float | None = None, version: str | None = None) -> list[LoggedDecision]:
    """Logged decisions (feedback joined), oldest first; LogError if a SQLite log file is absent."""
    try:
        path = sqlite_path(url)
    except ValueError as exc:
        raise LogError(str(exc)) from None
    if path is not None:
        if path.is_dir():
            raise LogError(f"decision log {path} is a directory: give the SQLite file")
        if not path.is_file():
            raise LogError(f"decision log {path} does not exist (the service's "
                           f"CONFROUTE_DECISION_LOG, default var/decisions.db)")
    store = open_store(url, readonly=True)
    try:
        return store.read(since, version)
    except (ValueError, OSError, sqlite3.Error) as exc:
        raise LogError(f"cannot read decision log {redact(url)}: {exc}") from None
    except Exception as exc:  # psycopg's errors (not importable without the postgres extra)
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        raise LogError(f"cannot read decision log {redact(url)}: {exc}") from None
    finally:
        store.close()


def since_version(url: str, version: str) -> float:
    """When `version` made its first logged decision (what `--since-version` starts from)."""
    first = read_log(url, None, version)
    if not first:
        raise LogError(f"version {version!r} made no logged decision in {redact(url)}")
    return min(d.created for d in first)


def log_rows(
    decisions: Sequence[LoggedDecision], panel: Panel, grader: Grader | None = None
) -> pd.DataFrame:
    """One row per (request, panel model): META_COLUMNS, FEATURE_NAMES and the decision's context."""
    latest: dict[tuple[str, str], LoggedDecision] = {}
    for d in (decisions if grader is None else with_late_labels(decisions, grader)):
        # shadow mode's would-be stages ('<id>:shadow') are more answers to the same request; the
        # served answer they reused is the same answer, kept once
        d = msgspec.structs.replace(d, request_id=d.request_id.removesuffix(SHADOW_SUFFIX))
        if d.decision != "error" and d.model in panel.names:
            latest[(d.request_id, d.model)] = d  # oldest first: the last one wins
    # signals are read by name: one this build added is NaN in older rows (the classifiers take
    # NaN), one it dropped is ignored; a row sharing no name with this build cannot be used
    kept = [d for d in latest.values() if set(d.signals) & set(FEATURE_NAMES)]
    if len(kept) < len(latest):
        raise LogError(f"{len(latest) - len(kept)} logged decisions share no signal name with "
                       f"this build's {len(FEATURE_NAMES)} features (an unnamed log of another "
                       f"width); read them with the build that wrote them")
    order = {m: i for i, m in enumerate(panel.names)}
    meta = pd.DataFrame([_meta(d, panel, order[d.model]) for d in kept],
                        columns=[*META_COLUMNS, "decision", "version", "lam", "created",
                                 "p_logged", "labeled"])
    signals = np.array([[d.signals.get(n, math.nan) for n in FEATURE_NAMES] for d in kept],
                       dtype=float).reshape(len(kept), len(FEATURE_NAMES))
    return pd.concat([meta, pd.DataFrame(signals, columns=list(FEATURE_NAMES))], axis=1)


def with_late_labels(decisions: Sequence[LoggedDecision], grader: Grader) -> list[LoggedDecision]:
    """The decisions, each unlabeled stage of a request that got a gold answer graded with it:
    stages logged after the feedback came (an exploration that finished late, shadow mode's
    would-be stages under '<id>:shadow' run after the reply) are graded as the service grades
    every stage it has. Retraining and `report traffic` both read the log through this."""
    gold: dict[str, str] = {}
    for d in decisions:
        if d.gold is not None:
            gold[d.request_id.removesuffix(SHADOW_SUFFIX)] = d.gold
    out = []
    for d in decisions:
        g = gold.get(d.request_id.removesuffix(SHADOW_SUFFIX))
        if d.correct is None and g is not None and d.decision != "error":
            d = msgspec.structs.replace(d, correct=grader.is_correct(d.prediction, g), gold=g)
        out.append(d)
    return out


def _meta(d: LoggedDecision, panel: Panel, stage: int) -> tuple[object, ...]:
    prompt, tokens = logged_tokens(d)
    return (d.request_id, LOG_SOURCE, d.model, stage, d.correct, d.prediction, prompt, tokens,
            logged_cost(d, panel), d.decision, d.version, d.lam, d.created, d.p_correct,
            d.correct is not None)


def label_counts(rows: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Per model: decisions, labeled, unlabeled (and of those, not accepted), labeled per kind."""
    out = []
    for model in models:
        r = rows[rows["model"] == model]
        labeled = r["labeled"].astype(bool)
        lab = r[labeled]
        by = lab["decision"].value_counts()
        out.append({"model": model, "decisions": len(r), "labeled": len(lab),
                    "unlabeled": len(r) - len(lab),
                    "unlabeled_not_accepted": int((~labeled & (r["decision"] != "accept")).sum()),
                    "labeled_correct": int(lab["correct"].sum()),
                    **{f"labeled_{k}": int(by.get(k, 0))
                       for k in ("accept", "escalate", "skip", "explore")}})
    return pd.DataFrame(out).set_index("model")


def labeled_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The labeled rows as the pipeline's feature table (META_COLUMNS + FEATURE_NAMES)."""
    lab = rows[rows["labeled"].astype(bool)]
    table = lab[[*META_COLUMNS, *FEATURE_NAMES]].reset_index(drop=True)
    table["correct"] = table["correct"].astype(bool)
    return table


def in_domain_dataset(
    labeled: pd.DataFrame, reference: pd.DataFrame | None, test_size: float, seed: int
) -> Dataset:
    """Log rows split by request id (held-out: in-domain only) plus reference rows for training."""
    test = split_items(labeled["item_id"], test_size, seed)
    if reference is None or reference.empty:
        return Dataset(labeled, list(FEATURE_NAMES), test)
    ref = reference[[*META_COLUMNS, *FEATURE_NAMES]].copy()
    ref["item_id"] = REFERENCE_PREFIX + ref["item_id"].astype(str)
    table = pd.concat([labeled, ref], ignore_index=True)
    return Dataset(table, list(FEATURE_NAMES), np.concatenate([test, np.zeros(len(ref), bool)]))
