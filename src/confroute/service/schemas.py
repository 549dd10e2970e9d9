"""API payloads. /v1/route is decoded with msgspec (typed; ~6x faster than pydantic on a 90 KB
body); the other endpoints take small bodies and use pydantic. Tokens reuse traces.Token.

A /v1/route body names the panel model and gives its tokens in exactly one of these layouts:
- a whole chat completion response as a server returns it (`choices[0].logprobs.content`;
  the text, finish_reason and usage are read from it too);
- `{"logprobs": {"content": [...]}}`, a bare `{"content": [...]}` list, or a trace's `tokens`;
- `compact`: numeric arrays `logprob[n]`, `top_logprobs[n][k]` and optional `tokens[n]` (the
  token strings; without them the answer-span signals are undefined).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from confroute.traces import Token, Usage

Lambda = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
MAX_REQUEST_ID = 200  # feedback names a request by it: the same bound everywhere
# alternatives per token: OpenAI's top_logprobs limit (and vLLM's default max_logprobs); it
# also bounds the array a ragged body pads to (tokens × the widest row)
MAX_TOP_LOGPROBS = 20
MAX_STAGE = 1000  # a cascade's position; far beyond any panel, and within every store's integer
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
RequestIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REQUEST_ID, pattern=NO_NUL)]
TokenT = TypeVar("TokenT")


class WireTopLogprob(msgspec.Struct, gc=False):
    """An alternative as the hot path decodes it: its logprob only (the text is skipped)."""

    logprob: float


class WireToken(msgspec.Struct, gc=False):
    """traces.Token as the hot path decodes it: ~30% faster to decode and to flatten."""

    token: str
    logprob: float
    top_logprobs: Annotated[list[WireTopLogprob], msgspec.Meta(max_length=MAX_TOP_LOGPROBS)] = []


class LogprobsBlock(msgspec.Struct, Generic[TokenT], gc=False):
    content: list[TokenT] | None = None


class ChoiceMessage(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[Any] | None = None  # only whether there are any is read


class Choice(msgspec.Struct, Generic[TokenT], gc=False):
    message: ChoiceMessage | None = None
    logprobs: LogprobsBlock[TokenT] | None = None
    finish_reason: str | None = None


class CompactTokens(msgspec.Struct, gc=False):
    """Numeric arrays instead of per-token objects."""

    logprob: list[float]
    top_logprobs: list[Annotated[list[float], msgspec.Meta(max_length=MAX_TOP_LOGPROBS)]] = []
    tokens: list[str] | None = None


class RouteRequest(msgspec.Struct, Generic[TokenT], gc=False):
    """One answer to decide on: the model that gave it and its tokens with logprobs.

    Decoded as RouteRequest[WireToken]; documented as RouteRequest[traces.Token].
    """

    model: str
    choices: list[Choice[TokenT]] | None = None
    logprobs: LogprobsBlock[TokenT] | None = None
    content: list[TokenT] | None = None
    tokens: list[TokenT] | None = None
    compact: CompactTokens | None = None
    response: str | None = None  # the answer text (default: the tokens joined)
    finish_reason: str | None = None
    usage: Usage | None = None
    previous: list[str | None] = []  # earlier stages' answers (or texts), cheapest first
    # the panel models that gave `previous`, in call order (the cascade policy's state); default:
    # unknown, and the answer is judged as if its model were called first
    previous_models: list[str] | None = None
    cost_quality_tradeoff: Lambda | None = None
    target_accuracy: Lambda | None = None  # instead of cost_quality_tradeoff (see ChatRequest)
    # accept whatever this answer is once this many models answered (previous + this one)
    max_models: Annotated[int, msgspec.Meta(ge=1, le=MAX_STAGE)] | None = None
    # panel price units: the next call is not recommended when its price (at this prompt's
    # tokens and the panel's max_tokens) would take cost_so_far past max_cost; cost_so_far
    # defaults to this answer's own price from `usage`
    max_cost: Annotated[float, msgspec.Meta(ge=0)] | None = None
    cost_so_far: Annotated[float, msgspec.Meta(ge=0)] | None = None
    request_id: RequestIdText | None = None  # ties stages of one query together (for feedback)
    stage: Annotated[int, msgspec.Meta(ge=0, le=MAX_STAGE)] | None = None  # default: len(previous)
    return_signals: bool = False


class RouteBatch(msgspec.Struct, Generic[TokenT], gc=False):
    items: list[RouteRequest[TokenT]]


class RouteDecision(msgspec.Struct):
    """The router's answer for one route request."""

    request_id: str
    stage: int
    model: str
    decision: Literal["accept", "escalate", "skip", "skip_ahead"]
    p_correct: float | None  # null when there were no logprobs to judge
    threshold: float | None
    next_model: str | None
    reason: str
    version: str
    cost_quality_tradeoff: float
    prediction: str | None
    signals: dict[str, float | None] | None = None
    # expected utility of each option ("accept" and each later model) under the cascade policy
    values: dict[str, float] | None = None


class RouteBatchResult(msgspec.Struct):
    results: list[RouteDecision]


# -- pydantic bodies (small) -------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str = "text"
    text: str | None = None


class ToolFunction(BaseModel):
    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Open):
    """One call in an assistant message, as OpenAI's API writes it (`arguments` a JSON string)."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: ToolFunction


class ChatMessage(_Open):
    role: str = Field(min_length=1)
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = Field(None, min_length=1)  # the call a `tool` message answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "function":
            raise ValueError("role 'function' is the legacy form: send role 'tool' with "
                             "tool_call_id")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class RouterOptions(BaseModel):
    """Per-request limits of the cascade."""

    model_config = ConfigDict(extra="forbid")
    max_escalations: int | None = Field(None, ge=0, description="0: the first answer stands")
    deadline_s: float | None = Field(None, gt=0, le=3600, description="whole cascade, seconds")


class ChatHeaders(BaseModel):
    """The chat endpoint's optional headers (the body's `router` options win over the limits)."""

    model_config = ConfigDict(extra="ignore")
    request_id: str | None = Field(None, alias="x-request-id", max_length=MAX_REQUEST_ID)
    max_escalations: int | None = Field(None, alias="x-confroute-max-escalations", ge=0)
    deadline_s: float | None = Field(None, alias="x-confroute-deadline-s", gt=0, le=3600)
    session: str | None = Field(None, alias="x-confroute-session", min_length=1, max_length=256)
    # the caller's W3C trace context: the request's span is its child (tracing.py); one that is
    # too long to be one is ignored, as the W3C spec says, and never fails the request
    traceparent: str | None = None
    tracestate: str | None = None

    @field_validator("traceparent", "tracestate", mode="before")
    @classmethod
    def _ignore_oversized(cls, value: object) -> object:
        return value if isinstance(value, str) and len(value) <= 512 else None


class ChatRequest(_Open):
    """OpenAI chat completion request; `model` is the router name, optionally `name:λ`."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    logprobs: bool = False
    cost_quality_tradeoff: float | None = Field(None, ge=0, le=1)
    # per-request limits: the cheapest λ setting whose fitted accuracy reaches the target (instead
    # of cost_quality_tradeoff); no call started whose price could exceed what is left of
    # max_cost (panel prices, at most max_tokens); at most max_models calls
    target_accuracy: float | None = Field(None, ge=0, le=1)
    max_cost: float | None = Field(None, ge=0)
    max_models: int | None = Field(None, ge=1, le=100)
    router: RouterOptions | None = None
    # OpenAI's end-user id; here also the conversation key (sessions.py) unless the
    # x-confroute-session header gives one
    user: str | None = Field(None, max_length=256)


class Feedback(BaseModel):
    """A label for a request: `correct` for the answer served, or `gold` to grade every stage."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID, pattern=NO_NUL)
    correct: bool | None = None
    gold: str | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_label(self) -> Feedback:
        if (self.correct is None) == (self.gold is None):
            raise ValueError("give exactly one of `correct` (true/false) or `gold` (the answer)")
        return self


def route_openapi() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """JSON schemas of the route payloads with traces.Token: (request, batch request, components)."""
    (single, batch, *_), components = msgspec.json.schema_components(
        [RouteRequest[Token] | list[RouteRequest[Token]], RouteBatch[Token],
         RouteDecision | list[RouteDecision], RouteBatchResult],
        ref_template="#/components/schemas/{name}",
    )
    text = json.dumps([single, batch, components]).replace("_Token_", "")  # RouteRequest_Token_
    single, batch, components = json.loads(text)
    return single, batch, components
