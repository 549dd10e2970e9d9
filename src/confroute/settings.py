"""Service settings: one pydantic-settings class, read from CONFROUTE_* variables and .env."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from confroute.decisions.location import sqlite_path


class Settings(BaseSettings):
    """Everything `confroute serve` can be told; CLI options override the environment."""

    model_config = SettingsConfigDict(env_prefix="CONFROUTE_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # processes serving one port (uvicorn workers); each loads the version and the embedded
    # models itself, and they share the decision log and models_dir
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    models_dir: Path = Path("models")  # serves models_dir/current (a symlink to a version)
    # a registered version to serve (registry.py): models:/NAME/N or models:/NAME@ALIAS, fetched
    # into models_dir and made current at start; follow_alias: poll the alias every
    # follow_interval_s and serve what a promotion moves it to (MLFLOW_TRACKING_URI: the store)
    version: str | None = None
    follow_alias: bool = False
    follow_interval_s: Annotated[float, Field(gt=0)] = 10.0
    panel: Path = Path("configs/panel.cpu.yaml")  # backends of /v1/chat/completions
    # the confidence looper's `algorithm: {type: confidence, ...}` block (looper.py); None: the
    # calibrated policy with these settings' defaults
    router_config: Path | None = None
    reload_interval_s: Annotated[float, Field(gt=0)] = 2.0  # poll of models/current, seconds
    # decision log: a SQLite file path (WAL) or a postgresql:// URL
    decision_log: str = "var/decisions.db"
    spill_path: Path = Path("var/decisions.spill.jsonl")  # records kept while the log is down
    spill_max_bytes: Annotated[int, Field(ge=0)] = 256 * 2**20  # beyond: dropped and counted
    log_retry_s: Annotated[float, Field(gt=0)] = 2.0  # how often a down log is retried
    log_response_chars: Annotated[int, Field(ge=0)] = 4000  # text kept per decision (0: none)
    # durable: no reply before its decisions are committed or fsynced to the spill file (group
    # commit); fast: the reply goes first and a crash can lose the last ~50 ms of decisions
    log_durability: Literal["durable", "fast"] = "durable"
    log_group_commit_ms: Annotated[float, Field(ge=0, le=100)] = 3.0  # durable: batch window
    # durable, one worker, SQLite: the event loop commits each group itself (more requests/s);
    # false keeps commits on the writer thread, for disks whose fsync stalls would block the loop
    log_inline_commit: bool = True
    # security: bearer keys; feedback and admin need one when any is set
    api_keys: Annotated[list[str], NoDecode] = []
    require_key_for_all: bool = False  # route and chat need a key too
    max_body_bytes: Annotated[int, Field(gt=0)] = 4 * 2**20  # larger bodies get 413
    max_batch: Annotated[int, Field(ge=1)] = 1000  # items per /v1/route batch
    # routing defaults
    # λ of requests that set none: 0.3, the looper's default too. At 0.5 one call of the last
    # model weighs as much as one right answer, and on the reference panel the policy then
    # serves SmolLM2's answers (about 4% right) to 30% of requests: nothing else pays for itself
    default_cost_quality_tradeoff: Annotated[float, Field(ge=0, le=1)] = 0.3
    # enforce: the router's answer is served; shadow: `shadow_model` (default: the last panel
    # model) is always served, and what the router would have done is logged (endpoint "shadow")
    # and counted in /metrics (confroute_shadow_cost, confroute_shadow_requests)
    mode: Literal["enforce", "shadow"] = "enforce"
    shadow_model: str | None = None
    # share of accepted chat answers also run on the next model and logged as "explore"
    explore_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    # route exploration (exploration.py): with this probability each choice of a chat request's
    # route (its first model; accept or which later model after each answer) is drawn uniformly
    # instead, and served; every decision logs its propensity for `report counterfactual`
    explore_route_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    # the most an explored call may cost (panel price units, at the prompt and max_tokens): a
    # dearer model is never chosen by exploration, only by the policy (None: no cap)
    explore_route_max_cost: Annotated[float | None, Field(ge=0)] = None
    # conversations keep their model (sessions.py): a chat turn with a `user` or an
    # x-confroute-session key never starts below the model that answered its previous turn within
    # this many seconds (0: off); in this process (`memory`, the most recent session_max keys) or
    # in a PostgreSQL table shared by every instance (a postgresql:// URL)
    session_ttl_s: Annotated[float, Field(ge=0)] = 1800.0
    session_max: Annotated[int, Field(ge=1)] = 10_000
    session_store: str = "memory"
    # answer extraction for agree_prev and feedback with a gold answer: the served version's own
    # (its manifest's `grader`); a setting that names another is refused, naming both
    grader: str | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """CONFROUTE_API_KEYS is comma-separated."""
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        """An empty host (an unset variable) made uvicorn listen on every interface."""
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"{value!r}: give an address to listen on (127.0.0.1, 0.0.0.0, ...)")
        return value

    @field_validator("version")
    @classmethod
    def _registry_version(cls, value: str | None) -> str | None:
        if value is not None:
            from confroute.registry import parse

            parse(value)
        return value

    @field_validator("session_store")
    @classmethod
    def _session_store(cls, value: str) -> str:
        if value not in ("", "memory") and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{value!r}: 'memory' or a postgresql:// URL")
        return value

    @field_validator("decision_log")
    @classmethod
    def _log_url(cls, value: str) -> str:
        """A SQLite path or a postgresql:// URL (the stores there are), refused at start."""
        sqlite_path(value)
        return value

    @field_validator("api_keys")
    @classmethod
    def _ascii_keys(cls, keys: list[str]) -> list[str]:
        """Bearer tokens are printable ASCII without spaces (RFC 6750): a key with anything else
        could never be presented, so it is refused at start rather than answering 401 forever.
        The key itself is not echoed."""
        for i, k in enumerate(keys, 1):
            if not (k.isascii() and k.isprintable() and " " not in k):
                raise ValueError(f"key {i} of {len(keys)} has a character outside printable ASCII "
                                 "or a space; API keys are bearer tokens (RFC 6750), ASCII only")
        return keys
