"""VLLMBackend without a GPU: output conversion, lazy import, and the engine wiring.

vLLM needs a GPU, so the dataclasses below stand in for the GPU engine's output types
(`vllm.outputs.RequestOutput`, `CompletionOutput`, `vllm.sequence.Logprob`), shaped like them
field for field, and a fake `vllm` module stands in for `LLM`/`SamplingParams` in the wiring
test. Everything else is the real code.
"""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from confroute.backends import BackendError, GenParams, make_backend
from confroute.backends.vllm import VLLMBackend, completion_from_vllm
from confroute.traces import Message


@dataclass
class Logprob:
    """Stands in for vllm.sequence.Logprob."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """Stands in for vllm.outputs.CompletionOutput."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    """Stands in for vllm.outputs.RequestOutput."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    outputs: list[CompletionOutput] = field(default_factory=list)


def _output(text: str = " 7 apples", finish: str | None = "stop") -> RequestOutput:
    """Two positions, k = 3: the sampled token is rank 2 at the first, rank 9 at the second."""
    first = {
        11: Logprob(-0.4, 1, " 7"),
        12: Logprob(-1.3, 2, " 8"),  # sampled
        13: Logprob(-2.0, 3, " 6"),
    }
    second = {
        21: Logprob(-0.2, 1, " apples"),
        22: Logprob(-2.5, 2, " pears"),
        23: Logprob(-3.0, 3, "."),
        29: Logprob(-7.5, 9, " oranges"),  # sampled, outside the top 3
    }
    out = CompletionOutput(0, text, [12, 29], -8.8, [first, second], finish)
    return RequestOutput("0", None, [1, 2, 3, 4, 5], [out])


def _positions(out: RequestOutput) -> list[dict[int, Logprob]]:
    logprobs = out.outputs[0].logprobs
    assert logprobs is not None
    return logprobs


def test_conversion_takes_top_k_by_rank_and_the_sampled_token_from_its_entry() -> None:
    completion = completion_from_vllm(_output(), "qwen", 1.23456, top_k=3)
    first, second = completion.tokens
    assert (first.token, first.logprob) == (" 8", -1.3)
    assert [(a.token, a.logprob) for a in first.top_logprobs] == [
        (" 7", -0.4),
        (" 8", -1.3),
        (" 6", -2.0),
    ]
    assert (second.token, second.logprob) == (" oranges", -7.5)
    assert [a.token for a in second.top_logprobs] == [" apples", " pears", "."]
    assert (completion.response, completion.finish_reason, completion.model) == (
        " 7 apples",
        "stop",
        "qwen",
    )
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 2)
    assert completion.latency_s == 1.235


def test_k_is_inferred_from_the_smallest_position_when_not_given() -> None:
    inferred = completion_from_vllm(_output(), "qwen", 0.0)
    assert [len(t.top_logprobs) for t in inferred.tokens] == [3, 3]
    assert inferred == completion_from_vllm(_output(), "qwen", 0.0, top_k=3)


def test_sampled_token_at_rank_k_plus_one_is_left_out_of_the_top_k() -> None:
    out = _output()
    second = _positions(out)[1]
    second[29].rank = 4  # the dict now looks like a top-4 one: only the asked k tells them apart
    out.outputs[0].token_ids, out.outputs[0].logprobs = [29], [second]
    (token,) = completion_from_vllm(out, "qwen", 0.0, top_k=3).tokens
    assert [a.token for a in token.top_logprobs] == [" apples", " pears", "."]
    assert (token.token, token.logprob) == (" oranges", -7.5)


def test_alternatives_are_sorted_by_logprob_when_ranks_and_logprobs_disagree() -> None:
    out = _output()
    _positions(out)[0][13].logprob = -0.1
    first = completion_from_vllm(out, "qwen", 0.0, top_k=3).tokens[0]
    assert [a.token for a in first.top_logprobs] == [" 6", " 7", " 8"]


def test_output_without_logprobs_gives_no_tokens() -> None:
    out = _output(finish=None)
    out.outputs[0].logprobs = None
    completion = completion_from_vllm(out, "qwen", 0.5)
    assert completion.tokens == [] and completion.finish_reason == "unknown"
    assert completion.usage.completion_tokens == 2


def test_logprobs_missing_the_sampled_token_is_an_error() -> None:
    out = _output()
    del _positions(out)[0][12]
    with pytest.raises(BackendError, match="qwen: vLLM logprobs miss the sampled token 12"):
        completion_from_vllm(out, "qwen", 0.0, top_k=3)


def test_importing_the_module_does_not_import_vllm() -> None:
    code = (
        "import sys, confroute.backends.vllm as m; "
        "m.VLLMBackend.from_spec('q', {'model': 'Qwen/Qwen2.5-0.5B-Instruct'}); "
        "assert 'vllm' not in sys.modules, 'vllm was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_vllm_calls_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, as uninstalled
    backend = make_backend("q", {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert isinstance(backend, VLLMBackend)
    with pytest.raises(BackendError, match=r"q: .*pip install confroute\[vllm\]"):
        list(backend.complete_many([[Message("user", "hi")]], GenParams()))
    with pytest.raises(BackendError, match=r"pip install confroute\[vllm\]"):
        backend.version()


class _FakeLLM:
    """Stands in for vllm.LLM: records its arguments, answers every conversation the same way."""

    instances: ClassVar[list[_FakeLLM]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[Any, ...]] = []
        _FakeLLM.instances.append(self)

    def chat(self, conversations: Any, sampling: Any, use_tqdm: bool = True) -> list[Any]:
        self.calls.append((conversations, sampling, use_tqdm))
        return [_output(text=f"answer {i}") for i in range(len(conversations))]


def test_engine_wiring_with_a_stand_in_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("vllm")
    fake.LLM = _FakeLLM  # type: ignore[attr-defined]
    fake.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    fake.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)
    spec = {"model": "Qwen/Qwen2.5-7B-Instruct", "tensor_parallel_size": 2, "max_model_len": 4096}
    backend = VLLMBackend.from_spec("q7", spec)
    prompts = [[Message("system", "s"), Message("user", f"q{i}")] for i in range(3)]
    params = GenParams(max_tokens=64, temperature=0.0, top_logprobs=3, seed=7)
    results = list(backend.complete_many(prompts, params))
    assert [i for i, _ in results] == [0, 1, 2]
    assert [c.response for _, c in results] == ["answer 0", "answer 1", "answer 2"]
    (engine,) = _FakeLLM.instances[-1:]
    assert engine.kwargs == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "tensor_parallel_size": 2,
        "max_model_len": 4096,
    }
    conversations, sampling, use_tqdm = engine.calls[0]
    assert conversations[1] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q1"},
    ]
    assert sampling == {"temperature": 0.0, "max_tokens": 64, "logprobs": 3, "seed": 7}
    assert use_tqdm is False and backend.version() == "vllm 0.0-fake"
    list(backend.complete_many(prompts[:1], params))
    assert len(engine.calls) == 2 and _FakeLLM.instances[-1] is engine  # loaded once
