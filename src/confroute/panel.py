"""The panel config: models from cheapest to most expensive, their backends, costs and the prompt.

Read from YAML under configs/ into validated models that reject unknown keys, so a typo is an
error naming the key rather than a silently ignored setting.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from confroute.backends.base import BACKENDS


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cost(StrictModel):
    """Price of one call: per call plus per 1k prompt and completion tokens (any currency)."""

    per_call: float = Field(0.0, ge=0)
    per_1k_prompt_tokens: float = Field(0.0, ge=0)
    per_1k_completion_tokens: float = Field(0.0, ge=0)

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            self.per_call
            + self.per_1k_prompt_tokens * prompt_tokens / 1000
            + self.per_1k_completion_tokens * completion_tokens / 1000
        )


class ModelBase(StrictModel):
    """What every panel model has, whatever serves it."""

    name: str
    # llamacpp: a reference-panel name or a GGUF path; openai/vllm: the served model name
    model: str | None = None
    on_error: Literal["skip", "fail"] = "skip"  # in the proxy: go on to the next model, or fail
    # an answer without logprobs (some hosted APIs refuse them): escalate it (the policy's rule
    # while a model is left) or accept it as it is (reason `no_logprobs_accepted`)
    no_logprobs: Literal["escalate", "accept"] = "escalate"
    timeout_s: float = Field(120.0, gt=0)  # one call, in the service (the embedded ones too)
    cost: Cost = Cost()

    def spec(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class LlamaCppModel(ModelBase):
    """A GGUF model run in-process by llama.cpp (the default backend)."""

    backend: Literal["llamacpp"] = "llamacpp"
    n_parallel: int = Field(8, ge=1)  # sequences decoded together
    n_ctx_per_seq: int = Field(1024, ge=128)
    n_threads: int | None = Field(None, ge=1)
    # in the service: concurrent requests join one running batch (False: one at a time)
    batch_requests: bool = True


class OpenAIModel(ModelBase):
    """Any OpenAI-compatible server (`vllm serve`, llama.cpp's server, a hosted API)."""

    backend: Literal["openai"]
    base_url: str = Field(min_length=1)  # e.g. http://127.0.0.1:8000/v1 (vllm serve)
    mode: Literal["chat", "completions"] = "chat"  # which endpoint to call
    api_key: str | None = None  # sent as bearer token; or set api_key_env
    api_key_env: str | None = None
    max_retries: int = Field(2, ge=0)  # within timeout_s, which bounds the whole call
    # each attempt's limit (default timeout_s / (max_retries + 1)): a hung attempt is retried
    attempt_timeout_s: float | None = Field(None, gt=0)
    max_concurrency: int = Field(8, ge=1)


class VLLMModel(ModelBase):
    """vLLM's offline engine in this process (generation; the service uses `openai`)."""

    backend: Literal["vllm"]
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)


def _backend_of(entry: Any) -> str:
    """The union's tag: `backend`, llamacpp when an entry leaves it out."""
    if isinstance(entry, dict):
        return str(entry.get("backend", "llamacpp"))
    return str(getattr(entry, "backend", "llamacpp"))


# One panel entry: its keys are checked against its backend's own settings, so a key of another
# backend (base_url on a llamacpp model) is an error naming it. A new backend is a class here,
# its tag below and an entry in backends.base.BACKENDS.
PanelModel = Annotated[
    Annotated[LlamaCppModel, Tag("llamacpp")] | Annotated[OpenAIModel, Tag("openai")]
    | Annotated[VLLMModel, Tag("vllm")],
    Discriminator(_backend_of, custom_error_type="backend",
                  custom_error_message=f"unknown backend; use {', '.join(BACKENDS)}"),
]
BACKEND_KINDS = tuple(BACKENDS)  # one list: the union's tags and what make_backend builds
_ENTRY: TypeAdapter[Any] = TypeAdapter(PanelModel)


def panel_model(entry: dict[str, Any]) -> LlamaCppModel | OpenAIModel | VLLMModel:
    """One panel entry (a dict as in the YAML), validated against its backend's settings."""
    model: LlamaCppModel | OpenAIModel | VLLMModel = _ENTRY.validate_python(entry)
    return model


class Prompt(StrictModel):
    """The prompt every model gets: the question placed into `template`."""

    system: str | None = None
    template: str = "{question}"

    @model_validator(mode="after")
    def _one_placeholder(self) -> Prompt:
        """`{question}` must appear, and no other field (write `{{` for a literal brace)."""
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise ValueError(f"prompt.template: {exc} (write {{{{ and }}}} for braces)") from None
        if fields != {"question"}:
            other = sorted(fields - {"question"})
            found = f"; found {other} (write {{{{ and }}}} for braces)" if other else ""
            raise ValueError("prompt.template must contain {question} and no other field" + found)
        return self

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": self.template.format(question=question)}]


class Decoding(StrictModel):
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_logprobs: int = Field(5, ge=0, le=20)


class Panel(StrictModel):
    """A panel: ordered cheapest first; the last model always answers."""

    name: str
    router_model: str = "confroute"  # the `model` name clients use for the router
    prompt: Prompt = Prompt()
    decoding: Decoding = Decoding()
    models: list[PanelModel]

    @model_validator(mode="after")
    def _unique(self) -> Panel:
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("a panel needs at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> LlamaCppModel | OpenAIModel | VLLMModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"model {name!r} is not in panel {self.name!r}; panel: {self.names}")


class ConfigError(ValueError):
    """A config file that does not parse or validate; the message names the file and key."""


def load_yaml_model(path: str | Path, cls: type[StrictModel]) -> Any:
    """Read YAML into a strict pydantic model; errors name the file and the offending keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls.model_validate(raw)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        lines = [f"  {_where(e['loc'])}: {_what(e)}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid {cls.__name__} config:\n" + "\n".join(lines)) from None


def _tag(loc: tuple[Any, ...], i: int) -> bool:
    """Whether loc[i] is a panel entry's backend tag (pydantic puts it after the list index)."""
    return loc[i] in BACKEND_KINDS and i > 0 and isinstance(loc[i - 1], int)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for i, x in enumerate(loc) if not _tag(loc, i))


def _what(e: Any) -> str:
    """pydantic's message; a key another backend takes says whose settings it is not among."""
    loc = e["loc"]
    tags = [x for i, x in enumerate(loc) if _tag(loc, i)]
    if e["type"] == "extra_forbidden" and tags:
        return f"not a setting of backend {tags[-1]} ({e['msg']})"
    return str(e["msg"])


def load_panel(path: str | Path) -> Panel:
    panel: Panel = load_yaml_model(path, Panel)
    return panel
