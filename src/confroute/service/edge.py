"""The HTTP edge: body-size limit, request metrics and the fast POST endpoints (one ASGI
middleware), and bearer API keys."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from confroute.errors import UnsupportedMediaType
from confroute.service.errors import Unauthorized, error_json
from confroute.service.metrics import Metrics
from confroute.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="an API key from CONFROUTE_API_KEYS")


class EdgeMiddleware:
    """413 for bodies over the limit (declared or streamed); count and time every request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics,
                 endpoints: frozenset[str], fast_posts: Mapping[str, ASGIApp]) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.endpoints = endpoints
        self.fast_posts = fast_posts  # POST endpoints served as plain ASGI (see route.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.endpoints else "other"
        # 499 (nginx's "client closed request") when nothing was sent because the client left
        status, t0 = [499], time.perf_counter()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        fast = self.fast_posts.get(scope["path"])
        try:
            if fast is not None and scope["method"] != "POST":
                await send_json(send_status, 405, error_json(
                    405, "method_not_allowed", f"{scope['path']} takes POST only"),
                    [(b"allow", b"POST")])
            elif self._declared_too_large(scope):
                await send_json(send_status, 413, error_json(
                    413, "request_too_large",
                    f"request body exceeds the limit of {self.max_body_bytes} bytes"),
                    [(b"connection", b"close")])
            elif fast is not None:
                await fast(scope, self._counting(scope, receive), send_status)
            else:
                await self.app(scope, self._counting(scope, receive), send_status)
        except BaseException:
            if status[0] == 499:
                status[0] = 500
            raise
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)

    def _declared_too_large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return not value.isdigit() or int(value) > self.max_body_bytes
        return False

    def _counting(self, scope: Scope, receive: Receive) -> Receive:
        """Without a content-length (chunked), count the bytes as they arrive."""
        if any(name == b"content-length" for name, _ in scope["headers"]):
            return receive
        seen = [0]
        limit = self.max_body_bytes

        async def counted() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        return counted


async def send_json(send: Send, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole JSON response as plain ASGI messages."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def check_key(settings: Settings, token: str | None) -> None:
    """401 unless `token` is one of the configured keys (any token passes when none are set)."""
    if not settings.api_keys:
        return
    if token is None:
        raise Unauthorized("this endpoint needs an API key: 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
    if not any(secrets.compare_digest(token.encode(), k.encode()) for k in settings.api_keys):
        raise Unauthorized("invalid API key", {"WWW-Authenticate": "Bearer"})


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


async def require_key(request: Request,
                cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Feedback and admin: a valid key whenever keys are configured."""
    check_key(_settings(request), cred.credentials if cred else None)


async def require_key_if_all(request: Request,
                       cred: Annotated[HTTPAuthorizationCredentials | None,
                                       Depends(_bearer)]) -> None:
    """Route and chat: a key only with CONFROUTE_REQUIRE_KEY_FOR_ALL."""
    s = _settings(request)
    if s.require_key_for_all:
        check_key(s, cred.credentials if cred else None)


KeyRequired = Depends(require_key)
KeyIfAll = Depends(require_key_if_all)


async def _json_only(request: Request) -> None:
    check_json_content_type(request.headers.get("content-type"))


JsonOnly = Depends(_json_only)  # the FastAPI endpoints' body check (feedback), as the fast ones'


def check_json_content_type(value: str | None) -> None:
    """JSON only (as FastAPI's strict content type): a form or text/plain POST, which a browser
    sends cross-site without asking, never starts a paid cascade or writes a decision record.
    No header: taken as JSON."""
    if value is None:
        return
    kind = value.split(";", 1)[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type {kind or value!r}: send application/json")
