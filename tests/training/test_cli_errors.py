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
# the shipped version on one reference set: what the evaluate cases judge
EVALUATE = ["evaluate", "--version", str(ROOT / "models/current"), "--traces",
            str(ROOT / "data/reference-traces/svamp_test.traces.npz")]


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
    damaged = bytearray(gzip.compress(bytes(range(256)) * 2000))  # a flipped deflate block
    damaged[2000:2100] = bytes(b ^ 255 for b in damaged[2000:2100])
    (tmp_path / "damaged.jsonl.gz").write_bytes(bytes(damaged))
    columnar = bytearray(next((ROOT / "data/reference-traces").glob("*.traces.npz")).read_bytes())
    columnar[5000:5100] = bytes(b ^ 255 for b in columnar[5000:5100])
    (tmp_path / "damaged.traces.npz").write_bytes(bytes(columnar))
    (tmp_path / "seed.yaml").write_text("seed: -1\n")
    (tmp_path / "items.json").write_text('["a", "b"')  # cut short
    (tmp_path / "dir").mkdir()
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.timeout(120)  # a serve case that regressed would start serving
@pytest.mark.parametrize(("args", "words"), [
    (["train", "--config", "{dir}"], "Is a directory"),
    (["serve", "--panel", "{dir}"], "Is a directory"),
    (["serve", "--log-level", "loud"], "log_level"),
    (["train", "--config", "{seed.yaml}"], "seed: Input should be greater than or equal to 0"),
    ([*EVALUATE, "--items-from", "{items.json}", "--out", "{dir}/eval", "--no-mlflow"],
     "items.json: not a JSON file"),
    ([*EVALUATE, "--learning-curve", "--config", "{seed.yaml}", "--out", "{dir}/eval",
      "--no-mlflow"], "seed: Input should be"),
    # a local file of another kind was taken for a hub name (about 25 s of retries)
    (["generate", "--dataset", "{junk.db}", "--out", "{dir}/g.jsonl"],
     "a dataset file must be .jsonl, .json, .csv or .parquet"),
    # an empty host listened on every interface; logs no store opens started ready, spilling
    (["serve", "--host", ""], "host: '': give an address to listen on"),
    (["serve", "--decision-log", "mysql://x/y"], "a SQLite file path or a postgresql:// URL"),
    (["serve", "--decision-log", "{dir}"], "is a directory: give a SQLite file path"),
    (["serve", "--decision-log", "{junk.db}"], "exists and is not a SQLite database"),
    (["serve", "--decision-log", "{junk.db}/d.db"], "is a file, not a directory"),
    (["generate", "--dataset", "gsm8k:test", "--out", "{dir}/t.jsonl", "--grader", "nope"],
     "unknown grader 'nope'"),
    (["drift", "--log", "{other.db}", "--models-dir", "{dir}/typo"], "not a directory"),
    (["report", "traces", "{notgzip.jsonl.gz}"], "gzip"),
    (["report", "traces", "{truncated.jsonl.gz}"], "end-of-stream"),
    (["report", "traces", "{damaged.jsonl.gz}"], "damaged.jsonl.gz: not a readable trace file"),
    (["report", "traces", "{damaged.traces.npz}"], "not a readable columnar trace file"),
    (["generate", "--dataset", "gsm8k:test", "--out", "{damaged.traces.npz}"],
     "a columnar trace file is written whole"),
    # an error naming a path with rich markup in it: printed as is (it was a MarkupError)
    (["report", "traces", "{dir}/t[/x]z.jsonl"], "t[/x]z.jsonl: no such trace file"),
    (["drift", "--log", "{other.db}"], "not a confroute decision log"),
    (["drift", "--log", "{junk.db}"], "not a confroute decision log"),
    (["drift", "--log", "{dir}"], "is a directory: give the SQLite file"),
    (["drift", "--log", "mysql://x/y"], "a SQLite file path or a postgresql:// URL"),
    (["report", "traffic", "--log", "{other.db}", "--since", "nan"], "--since 'nan': not a time"),
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


def test_a_version_whose_onnx_does_not_load_is_refused_by_verify_and_evaluate(
        tmp_path: Path) -> None:
    """A broken ONNX file with its matching sha256 in the manifest: verify said ok, evaluate
    raised onnxruntime's InvalidProtobuf; both now name the file and exit 2."""
    import json
    import shutil

    version = tmp_path / "vbroken"
    shutil.copytree((ROOT / "models/current").resolve(), version)
    onnx = next(version.glob("*.onnx"))
    onnx.write_bytes(b"not an onnx graph")
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"][onnx.name] = _digest(onnx)
    (version / "manifest.json").write_text(json.dumps(manifest))
    for args in (["models", "verify", str(version)],
                 ["evaluate", "--version", str(version), "--traces", str(ROOT / "data/reference-traces"),
                  "--out", str(tmp_path / "eval"), "--no-mlflow"]):
        code, output = _run(*args)
        assert code == 2 and f"{onnx.name}: onnxruntime cannot load it" in output, output
        assert "Traceback" not in output, output


def test_training_needs_labels_and_finite_costs(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlabeled traces (no gold, `correct` unset) were fitted as all wrong and made current; a
    feature table with a NaN cost was a KeyError traceback. Both: exit 2, no version written."""
    import msgspec

    from confroute.traces import append_traces, read_traces

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    traces = read_traces(ROOT / "tests/confroute/fixtures/traces_sample.jsonl")
    append_traces(tmp_path / "nogold.jsonl",
                  [msgspec.structs.replace(t, correct=None, gold=None) for t in traces])
    table = tmp_path / "table.csv"
    table.write_text("item_id,model,correct,cost,avg_logprob\n" + "".join(
        f"i{i},{m},{i % 2},nan,-0.{i}\n" for i in range(40) for m in ("a", "b")))
    out = tmp_path / "models"
    for args, words in ((["--traces", str(tmp_path / "nogold.jsonl")], "answers is labeled"),
                        (["--table", str(table)], "column 'cost' must hold a finite number")):
        code, output = _run("train", "--config", str(ROOT / "configs/train.yaml"), *args,
                            "--out", str(out))
        assert code == 2 and words in output and "Traceback" not in output, output
        assert not out.exists()


def test_a_broken_mlflow_store_is_one_line_and_evaluate_keeps_its_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking store that is not a database was a sqlite3 traceback in train (and retrain's
    exit 1 read as "refused by the gate"); evaluate computed everything, then lost report.json."""
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{junk}")
    config = tmp_path / "train.yaml"
    config.write_text((ROOT / "configs/train.yaml").read_text()
                      .replace("max_items: null", "max_items: 60")
                      .replace("[data/reference-traces]", f"[{ROOT / 'data/reference-traces'}]"))
    out = tmp_path / "models"
    code, output = _run("train", "--config", str(config), "--out", str(out))
    assert code == 2 and "Traceback" not in output, output
    assert f"MLflow tracking store sqlite:///{junk}: DatabaseError" in output, output
    assert not out.exists() and junk.read_text() == "not a database"
    code, output = _run(*EVALUATE, "--out", str(tmp_path / "eval"))
    assert code == 0, output
    import json

    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["mlflow"].startswith("not logged: MLflow tracking store") and report["apgr"]


def test_a_real_current_directory_is_refused_before_the_fit(tmp_path: Path) -> None:
    """`current` copied as a directory (cp -rL): the switch failed after the whole fit with a raw
    errno and left a stray `.current.<uuid>` symlink; now exit 2 first, nothing written."""
    out = tmp_path / "models"
    (out / "current").mkdir(parents=True)
    code, output = _run("train", "--config", str(ROOT / "configs/train.yaml"), "--out", str(out))
    assert code == 2 and "is a directory, not the symlink" in output, output
    assert [p.name for p in out.iterdir()] == ["current"]


def test_an_unknown_model_is_refused_before_any_download() -> None:
    code, output = _run("models", "pull", "smollm2-135m", "nonexistent")
    assert code == 2 and output.strip().splitlines() == [
        "error: unknown reference model 'nonexistent'; known: smollm2-135m, qwen2.5-coder-0.5b, "
        "qwen2.5-coder-1.5b"], output
