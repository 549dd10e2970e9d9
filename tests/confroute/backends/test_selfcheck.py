"""The install-time llama.cpp check: a real batched decode passes, a SIGILL is named in words."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroute.backends import selfcheck


@pytest.mark.slow
def test_a_batched_decode_passes_on_this_machine(smollm2_path: Path) -> None:
    ok, message = selfcheck.check()
    assert ok, message


def test_an_illegal_instruction_is_reported_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    ok, message = selfcheck.check()
    assert not ok
    assert "SIGILL" in message and "does not grant" in message


def test_any_other_failure_shows_the_childs_last_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "CHILD", "raise SystemExit('no model here')")
    ok, message = selfcheck.check()
    assert not ok and "exit 1" in message and "no model here" in message
