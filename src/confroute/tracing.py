"""OpenTelemetry traces: one span per request and one child span per cascade stage, with the
GenAI semantic conventions' attributes where they exist (`gen_ai.request.model`,
`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`) and confroute's own
(`confroute.p_correct`, `confroute.decision`, `confroute.reason`, `confroute.cost`,
`confroute.lambda`, `confroute.version`). The caller's W3C trace context (`traceparent`) is the
request span's parent, and every call to an OpenAI-compatible backend carries the stage span's.

Off by default. The standard variables turn it on at `confroute serve`: `OTEL_TRACES_EXPORTER`
(`otlp` or `console`; `none` keeps it off) or an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, with
`OTEL_SERVICE_NAME` (default `confroute`) and the exporter's own `OTEL_EXPORTER_OTLP_*`;
`OTEL_SDK_DISABLED=true` wins. The SDK and the OTLP exporter are the `otel` extra. While off,
every function here returns at its first line, so the decision path pays one boolean test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def on() -> bool:
    return _tracer is not None


def wanted(env: Mapping[str, str] = os.environ) -> str | None:
    """The exporter the OTEL_* variables ask for (`otlp`, `console`), or None: off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if kind in ("otlp", "console"):
        return kind
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if kind == "" and endpoint else None


def configure(env: Mapping[str, str] = os.environ, exporter: Any = None) -> bool:
    """Start tracing as the OTEL_* variables say (or into `exporter`, a SpanExporter, with a
    synchronous processor: tests); whether it is on. ValueError names what is missing or wrong.
    A provider of our own, not the process-global one, so MLflow's tracing and tests keep theirs."""
    global _tracer
    _tracer = None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() not in ("", "none", "otlp", "console"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: confroute "
                         "exports traces with otlp or console (or none)")
    kind = "given" if exporter is not None else wanted(env)
    if kind is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        raise ValueError("tracing asked for (OTEL_*), but opentelemetry-sdk is not installed: "
                         "pip install 'confroute[otel]'") from None
    service = env.get("OTEL_SERVICE_NAME") or "confroute"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("OTLP traces need opentelemetry-exporter-otlp-proto-http: pip "
                             "install 'confroute[otel]'") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = provider.get_tracer("confroute")
    return True


@contextlib.contextmanager
def request_span(name: str, carrier: Mapping[str, str | None],
                 attrs: Mapping[str, Any]) -> Iterator[Any]:
    """The span of one request, child of the caller's trace context (`traceparent`,
    `tracestate` in `carrier`); None while tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    ctx = extract({k: v for k, v in carrier.items() if v is not None})
    with _tracer.start_as_current_span(name, context=ctx, kind=SpanKind.SERVER,
                                       attributes=_clean(attrs)) as span:
        yield span


@contextlib.contextmanager
def stage_span(model: str) -> Iterator[Any]:
    """The span of one cascade stage (a call of `model` and the decision on its answer)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": model}) as span:
        yield span


def annotate(span: Any, attrs: Mapping[str, Any]) -> None:
    """Set attributes on a span (None values skipped); nothing while off."""
    if span is not None:
        span.set_attributes(_clean(attrs))


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's W3C trace context to outgoing HTTP headers (while on)."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as _inject

        _inject(headers)


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes OpenTelemetry can hold: None and NaN dropped."""
    return {k: v for k, v in attrs.items()
            if v is not None and not (isinstance(v, float) and v != v)}
