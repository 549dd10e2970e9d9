"""docs/service.md's settings table names every service setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from confroute.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def _table_variables() -> set[str]:
    text = DOC.read_text()
    table = text.split("**Settings**", 1)[1].split("\n\n", 2)[1]  # the paragraph, then the table
    return set(re.findall(r"`CONFROUTE_([A-Z_]+)`", table))


def test_the_settings_table_names_every_field() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    documented = _table_variables()
    assert fields - documented == set(), "settings missing from docs/service.md"
    assert documented - fields == set(), "docs/service.md names settings that do not exist"
