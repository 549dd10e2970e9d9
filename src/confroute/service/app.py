"""The FastAPI app: factory, lifespan (every resource is made here) and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp

from confroute import registry, tracing
from confroute.backends import Backend, make_backend
from confroute.decisions.feedback import apply_feedback
from confroute.decisions.log import DecisionLog
from confroute.decisions.slots import claim_spill
from confroute.engine import Engine
from confroute.looper import load_router_config
from confroute.manifest import ManifestError
from confroute.panel import Panel, load_panel
from confroute.runner import CascadeRunner
from confroute.service import chat, route
from confroute.service.edge import EdgeMiddleware, JsonOnly, KeyIfAll, KeyRequired
from confroute.service.errors import Conflict, install_error_handlers
from confroute.service.metrics import Metrics
from confroute.service.schemas import ChatHeaders, ChatRequest, Feedback, route_openapi
from confroute.sessions import open_sessions
from confroute.settings import Settings

log = logging.getLogger("confroute.service")
ENDPOINTS = frozenset({"/v1/route", "/v1/route/batch", "/v1/chat/completions", "/v1/feedback",
                       "/v1/models", "/healthz", "/metrics", "/admin/reload"})


@dataclass
class Resources:
    """What the routes use; made in the lifespan, reached through the *Dep aliases."""

    settings: Settings
    panel: Panel
    engine: Engine
    log: DecisionLog
    backends: dict[str, Backend]
    runner: CascadeRunner


def build(settings: Settings, metrics: Metrics) -> Resources:
    """Panel, backends (engines load on first use), decision log and engine; tracing as the
    OTEL_* variables say (tracing.py: off unless they ask; a provider set up before, as tests
    do, is kept)."""
    if not tracing.on():
        tracing.configure()
    panel = load_panel(settings.panel)
    looper = load_router_config(settings.router_config).algorithm if settings.router_config \
        else None
    conf = looper.confidence if looper else None
    if conf is not None and conf.on_error is not None:  # the looper's on_error: every model's
        panel = panel.model_copy(update={"models": [
            m.model_copy(update={"on_error": conf.on_error}) for m in panel.models]})
    default_lam = settings.default_cost_quality_tradeoff
    if conf is not None and conf.cost_quality_tradeoff is not None:
        default_lam = conf.cost_quality_tradeoff
    backends = {m.name: make_backend(m.name, m.spec()) for m in panel.models}
    spill = settings.spill_path if settings.workers == 1 else \
        claim_spill(settings.spill_path, settings.workers)
    dlog = DecisionLog(settings.decision_log, spill,
                       spill_max_bytes=settings.spill_max_bytes, retry_s=settings.log_retry_s,
                       durable=settings.log_durability == "durable",
                       group_commit_s=settings.log_group_commit_ms / 1000,
                       inline_commit=settings.workers == 1 and settings.log_inline_commit)
    engine = Engine(settings.models_dir, panel, settings.grader, default_lam, conf)
    shadow = None
    if settings.mode == "shadow":
        shadow = settings.shadow_model or panel.names[-1]
        if shadow not in panel.names:
            raise ValueError(f"shadow_model {shadow!r} is not in panel {panel.name!r}: "
                             f"{panel.names}")
    runner = CascadeRunner(panel, backends, engine, dlog, metrics, settings.log_response_chars,
                          settings.explore_rate, looper.budget if looper else None, shadow,
                          open_sessions(settings.session_store, settings.session_ttl_s,
                                        settings.session_max), settings.explore_route_rate,
                          settings.explore_route_max_cost)
    return Resources(settings, panel, engine, dlog, backends, runner)


async def _fetch_registered(settings: Settings) -> int | None:
    """--version models:/...: fetch, verify and make current the registered version before the
    first load (registry.py); its number, or None (logged: the service starts not ready, or on
    what models_dir already serves)."""
    if settings.version is None:
        return None
    try:
        number, path = await asyncio.to_thread(registry.serve_from,
                                               registry.parse(settings.version),
                                               settings.models_dir)
    except (ManifestError, OSError, ValueError) as exc:
        log.error("%s: %s", settings.version, exc)
        return None
    log.info("%s is registered version %d (%s)", settings.version, number, path.name)
    return number


def _follower(settings: Settings, number: int | None) -> asyncio.Task[None] | None:
    """--follow-alias: the task that moves `current` with the registry alias (registry.py)."""
    if settings.version is None or not settings.follow_alias:
        return None
    ref = registry.parse(settings.version)
    if ref.alias is None:
        log.warning("--follow-alias with %s: a version number never moves; not following",
                    settings.version)
        return None
    return asyncio.create_task(registry.follow(ref, settings.models_dir,
                                               settings.follow_interval_s, number=number))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    res = build(app.state.settings, app.state.metrics)
    app.state.resources = res
    res.log.start()
    number = await _fetch_registered(res.settings)
    try:
        version = await asyncio.to_thread(res.engine.versions.reload)
        app.state.metrics.serving(version.version)
    except (ManifestError, ValueError, OSError) as exc:  # up, but not ready until one loads
        log.warning("no model version loaded (%s); /healthz says 503 until one is", exc)
    watcher = asyncio.create_task(res.engine.versions.watch(
        res.settings.reload_interval_s, lambda v: app.state.metrics.serving(v.version)))
    follower = _follower(res.settings, number)
    # What start-up made (app, model version, onnxruntime, numba, ...) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise walk it mid-request.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        watcher.cancel()
        if follower is not None:
            follower.cancel()
        await res.runner.drain()
        await _close(res.backends)
        await asyncio.to_thread(res.log.close)


async def _close(backends: dict[str, Backend]) -> None:
    for b in backends.values():
        aclose = getattr(b, "aclose", None)
        if aclose is not None:
            await aclose()
        await asyncio.to_thread(b.close)


async def _resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def _metrics(request: Request) -> Metrics:
    m: Metrics = request.app.state.metrics
    return m


ResourcesDep = Annotated[Resources, Depends(_resources)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
_JSON = "application/json"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A router service for `settings` (default: from the environment)."""
    settings = settings or Settings()
    # strict_content_type off: a body without a Content-Type is read as JSON, as chat and route
    # read it; a non-JSON one is a 415 (JsonOnly), never FastAPI's "valid dictionary" 422
    app = FastAPI(title="confroute", version="1", lifespan=lifespan, strict_content_type=False,
                  description="Cheapest model first; escalate only when its calibrated "
                              "confidence says so.")
    app.state.settings, app.state.metrics = settings, Metrics()
    app.state.metrics.watch_log(
        lambda: getattr(getattr(app.state, "resources", None), "log", None))
    install_error_handlers(app)
    fast: dict[str, ASGIApp] = {"/v1/route": route.RouteEndpoint(app, batch=False),
                                "/v1/route/batch": route.RouteEndpoint(app, batch=True),
                                "/v1/chat/completions": chat.ChatEndpoint(app)}
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes,
                       metrics=app.state.metrics, endpoints=ENDPOINTS, fast_posts=fast)
    _routes(app)
    _document_route_schemas(app)
    return app


def _routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions", dependencies=[KeyIfAll])
    async def chat_completions(body: ChatRequest, res: ResourcesDep,
                               hdrs: Annotated[ChatHeaders, Header()]) -> Any:
        """OpenAI-compatible chat: the panel answers cheapest first, escalating per the policy.
        (In create_app's app the edge serves this path with chat.ChatEndpoint, which adds the
        content-type, encoding and combined 422 checks; this declaration is what OpenAPI
        shows, and it runs the same `respond` with FastAPI's own parsing only if the edge is
        left out.)"""
        reply = await chat.respond(res, body, hdrs)
        assert reply is not None
        if reply.events is not None:
            return StreamingResponse(reply.events, media_type="text/event-stream",
                                     headers=reply.headers)
        return Response(reply.body, media_type=_JSON, headers=reply.headers)

    @app.post("/v1/feedback", dependencies=[KeyRequired, JsonOnly])
    async def feedback(body: Feedback, res: ResourcesDep) -> dict[str, Any]:
        """Label a request: `correct` for the answer served, or `gold` to grade every stage."""
        return await apply_feedback(res.log, res.engine.grader, body.request_id, body.correct,
                                    body.gold)

    @app.get("/v1/models")
    async def models(res: ResourcesDep) -> dict[str, Any]:
        """The router's model name (OpenAI list layout), with the panel behind it."""
        entry = {"id": res.panel.router_model, "object": "model", "owned_by": "confroute",
                 "panel": res.panel.names, "version": res.engine.versions.version}
        return {"object": "list", "data": [entry]}

    @app.get("/healthz")
    async def healthz(res: ResourcesDep) -> JSONResponse:
        """200 when a verified version is loaded (503 otherwise), with the decision log's state."""
        v = res.engine.versions.current
        body = {"ready": v is not None, "version": v.version if v else None,
                "models": list(v.models) if v else [], "reload_error": res.engine.versions.last_error,
                "decision_log": msgspec.to_builtins(res.log.health())}
        return JSONResponse(body, 200 if v is not None else 503)

    @app.get("/metrics")
    async def metrics_text(metrics: MetricsDep) -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", dependencies=[KeyRequired])
    async def reload(res: ResourcesDep, metrics: MetricsDep) -> dict[str, Any]:
        """Load models/current now; 409 (and the old version keeps serving) if it is refused."""
        old = res.engine.versions.version
        try:
            v = await asyncio.to_thread(res.engine.versions.reload)
        except (ManifestError, ValueError, OSError) as exc:
            metrics.reloads.labels("refused").inc()
            raise Conflict(f"{exc}; still serving {old or 'nothing'}") from None
        metrics.reloads.labels("ok").inc()
        metrics.serving(v.version)
        return {"version": v.version, "previous": old, "changed": v.version != old}


def _route_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI paths of the plain-ASGI /v1/route endpoints, and the schemas they use."""
    single, batch, components = route_openapi()
    ok = {"$ref": "#/components/schemas/RouteDecision"}
    errors = {str(code): {"description": text, "content": {"application/json": {}}} for code, text
              in ((400, "bad input, named"), (401, "API key"), (413, "body over the limit"),
                  (503, "no model version loaded"))}

    def post(summary: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "security": [{"HTTPBearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": {"description": "decisions",
                                  "content": {"application/json": {"schema": response}}},
                          **errors}}}

    paths = {
        "/v1/route": post("Decide on one answer (or a list): accept, escalate or skip", single,
                          {"anyOf": [ok, {"type": "array", "items": ok}]}),
        "/v1/route/batch": post("Decide on many answers: {items: [...]} -> {results: [...]}",
                                batch, {"$ref": "#/components/schemas/RouteBatchResult"}),
    }
    return paths, components


def _document_route_schemas(app: FastAPI) -> None:
    """Add the msgspec-decoded /v1/route endpoints to the OpenAPI schema."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = base()
            paths, components = _route_paths()
            spec["paths"] = paths | spec.get("paths", {})
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            spec["components"].setdefault("securitySchemes", {})["HTTPBearer"] = {
                "type": "http", "scheme": "bearer"}
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
