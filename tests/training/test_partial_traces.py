"""Generation across sessions: working files rebuilt from the shipped set plus its partial work,
and only the items the shipped set lacks saved back to partial/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
import pytest

from confroute.traces import iter_traces, read_traces, write_traces

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "confroute" / "fixtures" / "traces_sample.jsonl"
spec = importlib.util.spec_from_file_location("partial_traces",
                                              ROOT / "training" / "scripts" / "partial_traces.py")
assert spec and spec.loader
partial = importlib.util.module_from_spec(spec)
spec.loader.exec_module(partial)


def test_restore_then_save_round_trips_only_the_new_items(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    small = [t for t in read_traces(SAMPLE) if t.model == "smollm2-135m"]
    shipped, new = small[:2], small[2:]
    assert new, "the fixture holds at least three SmolLM2 traces"
    Path("data/reference-traces/partial").mkdir(parents=True)
    write_traces("data/reference-traces/multiarith_test.traces.npz", shipped)
    write_traces("data/reference-traces/partial/multiarith_test.smollm2-135m.jsonl.gz", new)

    partial.restore()
    work = Path("var/traces/multiarith_test.smollm2-135m.jsonl")
    assert [t.item_id for t in iter_traces(work)] == [t.item_id for t in small]
    assert not Path("var/traces/multiarith_test.qwen2.5-coder-0.5b.jsonl").exists()
    before = work.read_bytes()
    partial.restore()  # twice: nothing changes, nothing doubles
    assert work.read_bytes() == before

    extra = msgspec.structs.replace(new[0], item_id="multiarith/test/99")
    with work.open("ab") as fh:  # a session generates one more item
        fh.write(msgspec.json.encode(extra) + b"\n")
    Path("data/reference-traces/partial/multiarith_test.smollm2-135m.jsonl.gz").unlink()
    partial.save()
    saved = read_traces("data/reference-traces/partial/multiarith_test.smollm2-135m.jsonl.gz")
    assert [t.item_id for t in saved] == [*(t.item_id for t in new), "multiarith/test/99"]

    write_traces("data/reference-traces/multiarith_test.traces.npz", [*small, extra])
    partial.save()  # the set now ships every item: its partial file goes
    assert not Path("data/reference-traces/partial/multiarith_test.smollm2-135m.jsonl.gz").exists()
