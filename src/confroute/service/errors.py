"""The one place where domain errors become HTTP errors, in OpenAI's error layout.

Every error body is `{"error": {"message": ..., "type": ..., "code": <status>}}` so the `openai`
client shows the message. A bad request is a 4xx that says what was wrong; a 500 is a bug.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from confroute.errors import (
    BackendFailed,
    BadRequest,
    Conflict,
    DeadlineExceeded,
    NotFound,
    NotReady,
    RoutingError,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger("confroute.service")


# The one map from a domain error to its HTTP answer: (status, OpenAI error type).
HTTP_STATUS: dict[type[RoutingError], tuple[int, str]] = {
    BadRequest: (400, "invalid_request_error"),
    UnsupportedMediaType: (415, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    NotFound: (404, "not_found_error"),
    Conflict: (409, "conflict"),
    BackendFailed: (502, "backend_error"),
    NotReady: (503, "not_ready"),
    DeadlineExceeded: (504, "deadline_exceeded"),
}


def http_status(exc: RoutingError) -> tuple[int, str]:
    """(status, type) of a domain error; an unmapped kind is a bug, so a 500."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500, "server_error"


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def error_json(status: int, kind: str, message: str) -> bytes:
    """error_body as JSON bytes, for the plain ASGI replies (edge.py, route.py)."""
    return msgspec.json.encode(error_body(status, kind, message))


def error_response(exc: RoutingError) -> JSONResponse:
    status, kind = http_status(exc)
    return JSONResponse(error_body(status, kind, exc.message), status, exc.headers)


def error_reply(exc: RoutingError) -> tuple[bytes, int]:
    """A domain error as (JSON body, status), for the plain ASGI replies."""
    status, kind = http_status(exc)
    return error_json(status, kind, exc.message), status


def plain_error(exc: RoutingError | StarletteHTTPException
                ) -> tuple[bytes, int, list[tuple[bytes, bytes]]]:
    """A domain error, or the edge's byte counter's 413 (a chunked body over the limit), as
    (JSON body, status, raw headers) for the plain ASGI endpoints (route.py, chat.py); a 5xx is
    logged as the FastAPI handlers log it."""
    if isinstance(exc, StarletteHTTPException):
        return error_json(exc.status_code, "request_too_large", str(exc.detail)), \
            exc.status_code, []
    body, status = error_reply(exc)
    _log_server_error(status, exc)
    return body, status, [(k.encode("latin-1"), v.encode("latin-1"))
                          for k, v in (exc.headers or {}).items()]


def _log_server_error(status: int, exc: RoutingError) -> None:
    if status >= 500:
        log.warning("%s: %s", http_status(exc)[1], exc.message)


_AT_PATH = re.compile(r"at `(\$[^`]*)`")


def bad_body(exc: Exception, body: bytes | None = None) -> BadRequest:
    """A msgspec decode or validation error as a 400 in confroute's own words.

    The first words are ours and stable across msgspec versions (tests assert them): "not valid
    UTF-8", "malformed JSON body", "number out of range at $.path", "invalid value at $.path".
    msgspec's own text follows after a colon only as detail, so a new msgspec release that
    rewords it changes nothing a client matches on."""
    detail = str(exc)
    path = m.group(1) if (m := _AT_PATH.search(detail)) else None
    where = f" at {path}" if path else ""
    if body is not None and not is_utf8(body):
        return BadRequest("the body is not valid UTF-8")
    if "out of range" in detail.lower():
        return BadRequest(f"number out of range{where}")
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"invalid value{where}: {detail}")
    return BadRequest(f"malformed JSON body: {detail}")


def is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _validation_message(errors: Sequence[Any], where: tuple[str, ...] = ()) -> str:
    """pydantic's errors as one line: `field.path: message; ...` (`body` when at the top)."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in (*where, *e.get("loc", ())) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def validation_json(errors: Sequence[Any], where: tuple[str, ...] = ()) -> bytes:
    """A 422 body for pydantic's errors, for the plain ASGI replies (chat.py)."""
    return error_json(422, "invalid_request_error", _validation_message(errors, where))


async def _routing_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RoutingError)
    _log_server_error(http_status(exc)[0], exc)
    return error_response(exc)


async def _msgspec_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(bad_body(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(422, "invalid_request_error",
                                   _validation_message(exc.errors())), 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, "invalid_request_error", str(exc.detail))
    return JSONResponse(body, exc.status_code, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Map every expected error to its 4xx/5xx answer."""
    app.add_exception_handler(RoutingError, _routing_error)
    app.add_exception_handler(msgspec.ValidationError, _msgspec_error)
    app.add_exception_handler(msgspec.DecodeError, _msgspec_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
