"""What can go wrong serving a routing request, in the domain's terms (no HTTP here).

The engine, the cascade and the decision log raise these; `confroute.service.errors` is the one
place that turns each kind into an HTTP status and OpenAI's error layout.
"""

from __future__ import annotations


class RoutingError(Exception):
    """A request that cannot be served; the subclass says why."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers  # for example Retry-After on NotReady


class BadRequest(RoutingError):
    """The caller's input is wrong (unknown model, λ out of range, unreachable target...)."""


class UnsupportedMediaType(BadRequest):
    """A body in a format the endpoint does not take (chat: JSON only)."""


class Unauthorized(RoutingError):
    """No valid API key."""


class NotFound(RoutingError):
    """A request id or resource that does not exist."""


class Conflict(RoutingError):
    """The request clashes with the state (a reload refused, feedback given twice...)."""


class BackendFailed(RoutingError):
    """A panel model's server failed and `on_error: fail` says so."""


class NotReady(RoutingError):
    """No verified model version is loaded, or the decision log is not open yet."""


class DeadlineExceeded(RoutingError):
    """The request's deadline passed before any answer."""
