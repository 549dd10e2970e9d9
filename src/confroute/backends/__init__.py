"""Generation backends: one interface (base.Backend), one adapter per engine, imported lazily."""

from confroute.backends.base import (
    Backend,
    BackendError,
    Completion,
    GenParams,
    PromptTooLong,
    make_backend,
)

__all__ = ["Backend", "BackendError", "Completion", "GenParams", "PromptTooLong", "make_backend"]
