"""The panel config: one typed entry per backend kind, each checked against its own settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroute.backends.base import BACKENDS
from confroute.panel import (
    BACKEND_KINDS,
    ConfigError,
    LlamaCppModel,
    OpenAIModel,
    VLLMModel,
    load_panel,
    panel_model,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["panel.cpu.yaml", "panel.qwen25-vllm.yaml"])
def test_the_shipped_panels_load(name: str) -> None:
    panel = load_panel(ROOT / "configs" / name)
    assert len(panel.models) >= 3


def test_each_entry_is_its_backend_kind() -> None:
    assert isinstance(panel_model({"name": "a"}), LlamaCppModel)  # the default backend
    m = panel_model({"name": "b", "backend": "openai", "base_url": "http://x/v1"})
    assert isinstance(m, OpenAIModel) and m.timeout_s == 120.0 and m.mode == "chat"
    assert isinstance(panel_model({"name": "c", "backend": "vllm"}), VLLMModel)
    assert set(BACKENDS) == set(BACKEND_KINDS)  # every kind the config takes can be built


@pytest.mark.parametrize(("entry", "words"), [
    ("{name: a, base_url: 'http://x/v1'}", "models.0.base_url: not a setting of backend llamacpp"),
    ("{name: a, backend: openai}", "models.0.base_url: Field required"),
    ("{name: a, backend: openai, base_url: 'http://x', n_parallel: 4}",
     "models.0.n_parallel: not a setting of backend openai"),
    ("{name: a, backend: vllm, max_retries: 1}", "models.0.max_retries: not a setting of backend vllm"),
    ("{name: a, backend: opneai}", "models.0: unknown backend; use llamacpp, openai, vllm"),
    ("{name: a, n_threads: 0}", "models.0.n_threads: Input should be greater than or equal to 1"),
])
def test_a_misplaced_key_is_one_line_naming_it(tmp_path: Path, entry: str, words: str) -> None:
    path = tmp_path / "panel.yaml"
    path.write_text(f"name: t\nmodels:\n  - {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_panel(path)
    assert words in str(err.value), str(err.value)
