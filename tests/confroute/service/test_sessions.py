"""Conversations keep their model (sessions.py): a turn with a conversation key never starts
below the model that answered its previous turn; in one process and across two instances on one
PostgreSQL table; a store that is down routes the turn as if it had no history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from decisions.pg import PgServer, remove, start_postgres  # tests/confroute is on sys.path
from pydantic import ValidationError
from support import free_port

from confroute.service import create_app
from confroute.sessions import MemorySessions, PostgresSessions, open_sessions
from confroute.settings import Settings

from .conftest import PANEL, serve_app, settings_for, stub_panel

SMALL, MEDIUM, LARGE = PANEL
HARD = "Solve: What is 1 + 2 + 3?"  # three numbers: the known cascade starts at the large model
EASY = "What is 3 + 4?"  # starts at the small one, whose confident answer is accepted


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    server = start_postgres(free_port())
    yield server
    remove(server)


def _turn(url: str, question: str, user: str | None = None, header: str | None = None) -> Any:
    body: dict[str, Any] = {"model": "confroute:0.5",
                            "messages": [{"role": "user", "content": question}]}
    if user is not None:
        body["user"] = user
    headers = {"x-confroute-session": header} if header else {}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["router"]


def _first(router: Any) -> tuple[str, str]:
    return router["start"]["model"], router["start"]["reason"]


def test_a_follow_up_turn_starts_at_the_model_that_answered_before(
    tmp_path: Path, cascade_models: Path, stub: str,
) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("ok:7", "ok:7", "ok:6"))
    with serve_app(create_app(settings_for(tmp_path, cascade_models, panel))) as url:
        assert _first(_turn(url, EASY)) == (SMALL, "query_features")  # no key: judged alone
        assert _first(_turn(url, HARD, user="alice"))[0] == LARGE
        follow = _turn(url, EASY, user="alice")
        assert _first(follow) == (LARGE, "session")
        assert [t["model"] for t in follow["tried"]] == [LARGE]
        assert _first(_turn(url, EASY, user="bob"))[0] == SMALL  # another conversation
        # the header names the conversation when given (here: alice's, for user bob)
        assert _first(_turn(url, EASY, user="bob", header="alice")) == (LARGE, "session")
        bad = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "confroute", "user": "x" * 300, "messages": [{"role": "user",
                                                                   "content": EASY}]})
        assert bad.status_code == 422 and "user" in bad.text  # as every invalid chat field


def test_sessions_expire_and_can_be_turned_off(tmp_path: Path, cascade_models: Path, stub: str) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("ok:7", "ok:7", "ok:6"))
    short = settings_for(tmp_path, cascade_models, panel, session_ttl_s=0.3)
    with serve_app(create_app(short)) as url:
        _turn(url, HARD, user="carol")
        assert _first(_turn(url, EASY, user="carol"))[1] == "session"
        time.sleep(0.4)
        assert _first(_turn(url, EASY, user="carol"))[0] == SMALL
    off = settings_for(tmp_path, cascade_models, panel, session_ttl_s=0)
    with serve_app(create_app(off)) as url:
        _turn(url, HARD, user="dave")
        assert _first(_turn(url, EASY, user="dave"))[0] == SMALL


def test_two_instances_share_one_postgresql_session_table(
    tmp_path: Path, cascade_models: Path, stub: str, postgres: PgServer,
) -> None:
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("ok:7", "ok:7", "ok:6"))
    a = settings_for(tmp_path / "a", cascade_models, panel, session_store=postgres.url)
    b = settings_for(tmp_path / "b", cascade_models, panel, session_store=postgres.url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve_app(create_app(a)) as url_a, serve_app(create_app(b)) as url_b:
        assert _first(_turn(url_a, HARD, user="erin"))[0] == LARGE
        assert _first(_turn(url_b, EASY, user="erin")) == (LARGE, "session")  # the other one
        postgres.stop()
        try:  # the store is down: the turn is routed without its history, never refused
            assert _first(_turn(url_b, EASY, user="erin"))[0] == SMALL
        finally:
            postgres.start()
        _turn(url_a, HARD, user="frank")  # reconnects by itself
        assert _first(_turn(url_b, EASY, user="frank")) == (LARGE, "session")


def test_the_memory_store_keeps_the_most_recent_conversations() -> None:
    s = MemorySessions(ttl_s=60, max_size=2)

    async def run() -> list[str | None]:
        await s.answered("a", SMALL)
        await s.answered("b", MEDIUM)
        assert await s.last("a") == SMALL  # a is now the most recent
        await s.answered("c", LARGE)  # b, the least recently used, is dropped
        return [await s.last(k) for k in ("a", "b", "c")]

    assert asyncio.run(run()) == [SMALL, None, LARGE] and len(s) == 2


def test_the_store_setting() -> None:
    assert open_sessions("memory", 0, 10) is None
    assert isinstance(open_sessions("memory", 5, 10), MemorySessions)
    assert isinstance(open_sessions("postgresql://u@h/db", 5, 10), PostgresSessions)
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        Settings(session_store="redis://x")
