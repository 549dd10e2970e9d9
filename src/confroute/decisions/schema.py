"""The decision log's tables, the same in SQLite and PostgreSQL, and their upgrade in place.

Same columns in both databases; REAL is DOUBLE PRECISION and the id BIGSERIAL in PostgreSQL,
`correct` is 0/1 in SQLite and BOOLEAN in PostgreSQL:

    decisions(id INTEGER PRIMARY KEY,       -- insertion order
              record_id TEXT UNIQUE,        -- makes replaying the spill buffer idempotent
              request_id TEXT, stage INTEGER,  -- stage: 0 for the first (cheapest) model called
              model TEXT,
              signals TEXT,                 -- JSON object {signal name: value}, null for NaN
                                            -- (older logs: an array in FEATURE_NAMES order)
              p_correct REAL, threshold REAL, -- NULL when undefined (no logprobs; last model)
              decision TEXT,                -- accept | escalate | skip | error
              reason TEXT,                  -- confident | not_worth_escalating | not_confident | ...
              lam REAL, version TEXT,       -- cost_quality_tradeoff and router version used
              latency_s REAL,               -- decision (route) or backend call (chat) seconds
              created REAL,                 -- unix seconds
              prediction TEXT,              -- the answer extracted from the response (grader)
              response TEXT,                -- the response text (truncated to log_response_chars)
              endpoint TEXT,                -- route | chat | shadow
              prompt_tokens INTEGER,        -- the call's tokens as its server reported them
              completion_tokens INTEGER,    -- (NULL: not reported, or an older row)
              propensity REAL,              -- P(this call | the state before it) under the
                                            -- serving policy: 1 deterministic, an ε-mixture
                                            -- under route exploration (NULL: an older row)
              choice_eps REAL)              -- the ε of that choice (0: no other was possible)
    feedback(request_id TEXT, stage INTEGER, correct BOOLEAN, gold TEXT, created REAL,
             PRIMARY KEY (request_id, stage))  -- the latest feedback per stage wins

Columns added after a log was first written (`ADDED`) are added by the next writer that opens
it (`upgrade`: ALTER TABLE ... ADD COLUMN, NULL in the older rows); a reader (retrain, drift)
never changes a log and reads NULL where its log has no such column yet.
"""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "record_id", "request_id", "stage", "model", "signals", "p_correct", "threshold", "decision",
    "reason", "lam", "version", "latency_s", "created", "prediction", "response", "endpoint",
    "prompt_tokens", "completion_tokens", "propensity", "choice_eps",
)
# columns a log written by an older build may lack, with their types
ADDED = {"prompt_tokens": "INTEGER", "completion_tokens": "INTEGER", "propensity": "{real}",
         "choice_eps": "{real}"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
  id {serial} PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, request_id TEXT NOT NULL,
  stage INTEGER NOT NULL, model TEXT NOT NULL, signals TEXT NOT NULL, p_correct {real},
  threshold {real}, decision TEXT NOT NULL, reason TEXT NOT NULL, lam {real},
  version TEXT NOT NULL, latency_s {real} NOT NULL, created {real} NOT NULL,
  prediction TEXT, response TEXT, endpoint TEXT NOT NULL, prompt_tokens INTEGER,
  completion_tokens INTEGER, propensity {real}, choice_eps {real});
CREATE INDEX IF NOT EXISTS decisions_request ON decisions (request_id);
CREATE INDEX IF NOT EXISTS decisions_created ON decisions (created);
CREATE TABLE IF NOT EXISTS feedback (
  request_id TEXT NOT NULL, stage INTEGER NOT NULL, correct {boolean} NOT NULL, gold TEXT,
  created {real} NOT NULL, PRIMARY KEY (request_id, stage));
"""
INSERT = (
    f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (record_id) DO NOTHING"
)
UPSERT_FEEDBACK = (
    "INSERT INTO feedback (request_id, stage, correct, gold, created) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (request_id, stage) DO UPDATE SET correct = excluded.correct, "
    "gold = excluded.gold, created = excluded.created"
)
STAGES = (
    "SELECT stage, model, decision, prediction FROM decisions WHERE request_id = ? ORDER BY id"
)


def select(present: set[str]) -> str:
    """The read of every decision with its feedback joined; NULL for an added column the log
    does not have yet."""
    added = ", ".join(f"d.{c}" if c in present else f"NULL AS {c}" for c in ADDED)
    return ("SELECT d.request_id, d.stage, d.model, d.signals, d.p_correct, d.threshold, "
            "d.decision, d.reason, d.lam, d.version, d.latency_s, d.created, d.prediction, "
            f"d.response, d.endpoint, f.correct, f.gold, {added} FROM decisions d "
            "LEFT JOIN feedback f ON f.request_id = d.request_id AND f.stage = d.stage")


def columns(conn: Any) -> set[str]:
    """The decisions table's column names (DB-API: the cursor describes an empty read)."""
    cur = conn.cursor()
    try:
        cur.execute("SELECT * FROM decisions LIMIT 0")
        return {d[0] for d in cur.description}
    finally:
        cur.close()


def upgrade(conn: Any, types: dict[str, str] | None = None) -> None:
    """Add the columns of ADDED a log lacks (`types`: the store's names for {real} and the
    like). Another writer may add one meanwhile (several workers start at once): an ALTER that
    fails is fine when the column is there after it."""
    present = columns(conn)
    for name, kind in ADDED.items():
        kind = kind.format(**(types or {"real": "REAL"}))
        if name in present:
            continue
        cur = conn.cursor()
        try:
            cur.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")  # fixed names
        except Exception:
            if name not in columns(conn):
                raise
        finally:
            cur.close()


def check_schema(conn: Any) -> None:
    """ValueError unless both tables of a decision log are there."""
    for table in ("decisions", "feedback"):
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT 1 FROM {table} LIMIT 0")  # a fixed table name
        except Exception as exc:
            raise ValueError(f"not a confroute decision log: no readable table {table!r} "
                             f"({type(exc).__name__}: {str(exc).strip()})") from None
        finally:
            cur.close()
