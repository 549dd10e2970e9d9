"""Bad input to the CLI: one clear line, exit 2, no traceback, and nothing written."""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confroute.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _fill(arg: str, files: dict[str, Path]) -> str:
    for name, path in files.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    other = tmp_path / "other.db"  # a SQLite file that is not a decision log
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    (tmp_path / "junk.db").write_text("not a database")
    (tmp_path / "notgzip.jsonl.gz").write_text("plain text")
    line = b'{"item_id": "' + bytes(range(48, 58)) * 500 + b'"}\n'  # one line, cut mid-way
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(line)[:40])
    (tmp_path / "dir").mkdir()
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(("args", "words"), [
    (["train", "--config", "{dir}"], "Is a directory"),
    (["serve", "--panel", "{dir}"], "Is a directory"),
    (["serve", "--log-level", "loud"], "log_level"),
    (["generate", "--dataset", "gsm8k:test", "--out", "{dir}/t.jsonl", "--grader", "nope"],
     "unknown grader 'nope'"),
    (["drift", "--log", "{other.db}", "--models-dir", "{dir}/typo"], "not a directory"),
    (["report", "traces", "{notgzip.jsonl.gz}"], "gzip"),
    (["report", "traces", "{truncated.jsonl.gz}"], "end-of-stream"),
    (["drift", "--log", "{other.db}"], "not a confroute decision log"),
    (["drift", "--log", "{junk.db}"], "not a confroute decision log"),
    (["retrain", "--log", "{other.db}", "--dry-run"], "not a confroute decision log"),
    (["retrain", "--log", "{other.db}", "--models-dir", "{dir}/typo"], "not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(files: dict[str, Path], args: list[str],
                                          words: str) -> None:
    before = {name: _digest(p) for name, p in files.items() if p.is_file()}
    code, output = _run(*(_fill(a, files) for a in args))
    assert code == 2 and words in output and "Traceback" not in output, output
    assert {name: _digest(p) for name, p in files.items() if p.is_file()} == before
    assert {p.name for p in files["dir"].parent.iterdir()} == set(files)  # nothing created


def test_a_template_with_an_unknown_field_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    panel = (ROOT / "configs/panel.cpu.yaml").read_text().replace("{question}", "{question} {oops}")
    (tmp_path / "panel.yaml").write_text(panel)
    code, output = _run("serve", "--panel", str(tmp_path / "panel.yaml"))
    assert code == 2 and "['oops']" in output and "Traceback" not in output, output


def test_an_unknown_embedded_model_is_refused_before_serving(tmp_path: Path) -> None:
    panel = (ROOT / "configs/panel.cpu.yaml").read_text().replace(
        "model: smollm2-135m", "model: nope-model")
    (tmp_path / "panel.yaml").write_text(panel)
    code, output = _run("serve", "--panel", str(tmp_path / "panel.yaml"))
    assert code == 2 and "no such model file nope-model" in output, output


def test_a_grader_setting_that_conflicts_with_the_manifest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped version's signals were computed with the numeric grader: serving it with
    another would feed its classifiers answer_* and agree_prev values they never learned."""
    monkeypatch.setenv("CONFROUTE_GRADER", "exact")
    code, output = _run("serve", "--models-dir", str(ROOT / "models"))
    assert code == 2 and "Traceback" not in output, output
    assert "CONFROUTE_GRADER=exact conflicts with version" in output and "'numeric'" in output
    assert len(output.strip().splitlines()) == 1
    monkeypatch.setenv("CONFROUTE_GRADER", "fuzzy")
    code, output = _run("serve", "--models-dir", str(ROOT / "models"))
    assert code == 2 and "unknown grader 'fuzzy'" in output, output
