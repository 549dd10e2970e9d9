"""The one place where domain errors become HTTP errors, in OpenAI's error layout.

Every error body is `{"error": {"message": ..., "type": ..., "code": <status>}}` so the `openai`
client shows the message. A bad request is a 4xx that says what was wrong; a 500 is a bug.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("confroute.service")


class ServiceError(Exception):
    """A request that cannot be served; `status` and `kind` choose the HTTP answer."""

    status = 500
    kind = "server_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(ServiceError):
    status, kind = 400, "invalid_request_error"


class Unauthorized(ServiceError):
    status, kind = 401, "authentication_error"


class NotFound(ServiceError):
    status, kind = 404, "not_found_error"


class Conflict(ServiceError):
    status, kind = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, kind = 413, "request_too_large"


class BackendFailed(ServiceError):
    status, kind = 502, "backend_error"


class NotReady(ServiceError):
    status, kind = 503, "not_ready"


class DeadlineExceeded(ServiceError):
    status, kind = 504, "deadline_exceeded"


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def error_json(status: int, kind: str, message: str) -> bytes:
    """error_body as JSON bytes, for the plain ASGI replies (edge.py, route.py)."""
    return msgspec.json.encode(error_body(status, kind, message))


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.kind, exc.message), exc.status, exc.headers)


def bad_body(exc: Exception) -> BadRequest:
    """A msgspec decode or validation error as a 400 naming the field."""
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"invalid request body: {exc}")
    return BadRequest(f"malformed JSON body: {exc}")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.warning("%s: %s", exc.kind, exc.message)
    return error_response(exc)


async def _msgspec_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(bad_body(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(422, "invalid_request_error", _validation_message(exc)), 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, "invalid_request_error", str(exc.detail))
    return JSONResponse(body, exc.status_code, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Map every expected error to its 4xx/5xx answer."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(msgspec.ValidationError, _msgspec_error)
    app.add_exception_handler(msgspec.DecodeError, _msgspec_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
