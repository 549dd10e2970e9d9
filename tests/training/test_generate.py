"""`confroute generate` end to end on the real SmolLM2 model: graded traces, resumable, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from confroute.backends.llamacpp import LlamaCppBackend
from confroute.cli import app
from confroute.grading import get_grader
from confroute.traces import encode_trace, read_traces
from training.datasets import Item, load_items

PANEL = """\
name: test-panel
prompt:
  template: "Solve this math problem. Reason briefly, then end with the line 'The answer is: N' \
where N is a number.\\n\\n{question}"
decoding: {max_tokens: 64, temperature: 0.0, top_logprobs: 5}
models:
  - name: smollm2-135m
    model: smollm2-135m
    n_parallel: 3
    n_ctx_per_seq: 512
    n_threads: 1   # the test machine's cores are busy; one thread decodes fastest there
    cost: {per_1k_completion_tokens: 20.0}
  - name: never-used
    model: /nowhere/model.gguf
"""


WIDE = {"COLUMNS": "200"}  # rich cuts the summary table to 80 columns when not on a terminal


def _flat(result: Result) -> str:
    return " ".join(result.output.split())


def _generate(panel: Path, out: Path, *extra: str) -> Result:
    args = ["generate", "--panel", str(panel), "--dataset", "multiarith:test", "--limit", "3",
            "--models", "smollm2-135m", "--out", str(out), *extra]
    return CliRunner().invoke(app, args, env=WIDE)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> tuple[Path, Path, Result]:
    """One real generation: 3 MultiArith items, SmolLM2, 64 tokens each."""
    tmp = tmp_path_factory.mktemp("generate")
    panel = tmp / "panel.yaml"
    panel.write_text(PANEL)
    out = tmp / "traces" / "multiarith.jsonl"
    return panel, out, _generate(panel, out)


@pytest.mark.slow
def test_generate_writes_graded_traces(run: tuple[Path, Path, Result]) -> None:
    _, out, result = run
    assert result.exit_code == 0, result.output
    traces = read_traces(out)
    items = {it.item_id: it for it in load_items("multiarith:test", limit=3)}
    assert sorted(t.item_id for t in traces) == sorted(items)
    grader = get_grader("numeric")
    for t in traces:
        item = items[t.item_id]
        assert (t.model, t.dataset, t.gold) == ("smollm2-135m", "multiarith", item.gold)
        assert item.question in t.messages[-1].content
        assert t.messages[-1].content.startswith("Solve this math problem.")
        ext = grader.extract(t.response)
        assert t.prediction == (ext.value if ext else None)
        assert t.correct == grader.is_correct(t.prediction, item.gold)
        assert t.generator is not None
        assert (t.generator.backend, t.generator.max_tokens, t.generator.top_logprobs) == (
            "llamacpp", 64, 5)
        assert 0 < len(t.tokens) == t.usage.completion_tokens <= 64
        assert all(len(tok.top_logprobs) == 5 for tok in t.tokens)
        assert t.finish_reason in {"stop", "length"}


@pytest.mark.slow
def test_generate_prints_summary(run: tuple[Path, Path, Result]) -> None:
    _, out, result = run
    traces = read_traces(out)
    correct = sum(bool(t.correct) for t in traces)
    tokens = sum(t.usage.completion_tokens for t in traces)
    row = next(line for line in result.output.splitlines() if "smollm2-135m" in line
               and "multiarith" in line)
    assert f"{correct / 3:.3f}" in row and str(tokens) in row


@pytest.mark.slow
def test_resume_regenerates_only_what_is_missing(
    run: tuple[Path, Path, Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    panel, out, first = run
    assert first.exit_code == 0
    traces = read_traces(out)
    # a run killed while writing the third trace: its line is torn
    lines = [encode_trace(t).decode() + "\n" for t in traces]
    out.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2], encoding="utf-8")
    again = _generate(panel, out)
    assert again.exit_code == 0, again.output
    resumed = read_traces(out)
    assert [t.item_id for t in resumed] == [t.item_id for t in traces]
    # the two complete traces are kept byte for byte (regenerated ones would differ in latency)
    assert out.read_text(encoding="utf-8").startswith(lines[0] + lines[1])
    assert resumed[2].model == "smollm2-135m" and resumed[2].tokens
    # (not asserted: the same text as before. Decoded alone rather than in a batch of 3, llama.cpp's
    # numerics differ slightly and a greedy SmolLM2 answer can take another path.)
    # everything is there now: a third run must not even load a model
    before = out.read_bytes()

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed run with nothing to do loaded a model")

    monkeypatch.setattr(LlamaCppBackend, "from_spec", classmethod(no_model))
    third = _generate(panel, out)
    assert third.exit_code == 0, third.output
    assert out.read_bytes() == before
    assert "smollm2-135m" in third.output  # the summary is printed all the same


def test_skip_leaves_out_the_first_items_keeping_their_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.generate

    seen: list[str] = []

    def capture(cfg: object, items: list[Item], out: Path, **kwargs: object) -> list[object]:
        seen.extend(it.item_id for it in items)
        return []

    monkeypatch.setattr(training.generate, "generate", capture)
    panel = tmp_path / "panel.yaml"
    panel.write_text(PANEL)
    result = _generate(panel, tmp_path / "out.jsonl", "--skip", "2")
    assert result.exit_code == 0, result.output
    assert seen == ["multiarith/test/2"]
    refused = _generate(panel, tmp_path / "out.jsonl", "--skip", "3")
    assert refused.exit_code == 2
    assert "--skip 3 leaves none of the 3 items of multiarith:test" in _flat(refused)


def test_bad_panel_key_is_one_clear_error(tmp_path: Path) -> None:
    panel = tmp_path / "panel.yaml"
    panel.write_text(PANEL.replace("    n_parallel: 3\n", "    n_paralel: 3\n"))
    result = _generate(panel, tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert "models.0.n_paralel: not a setting of backend llamacpp" in _flat(result)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_panel_file_is_one_clear_error(tmp_path: Path) -> None:
    result = _generate(tmp_path / "nope.yaml", tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert "nope.yaml does not exist" in _flat(result)


def test_unknown_dataset_is_one_clear_error(tmp_path: Path) -> None:
    panel = tmp_path / "panel.yaml"
    panel.write_text(PANEL)
    args = ["generate", "--panel", str(panel), "--dataset", "gsm8k:dev", "--out",
            str(tmp_path / "o.jsonl")]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and "unknown split 'gsm8k:dev'" in _flat(result)
