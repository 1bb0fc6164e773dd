"""Typed domain errors. Engines raise these; one gRPC interceptor maps them to status codes."""

from __future__ import annotations


class LodestarError(Exception):
    """Base of every error the engines raise on purpose; the message is shown to the client."""


class InvalidInput(LodestarError):
    """The request is malformed or outside a limit (-> INVALID_ARGUMENT)."""


class NotFound(LodestarError):
    """A named thing (collection, adapter, job) does not exist (-> NOT_FOUND)."""


class AlreadyExists(LodestarError):
    """Creating something whose name is taken (-> ALREADY_EXISTS)."""


class Overloaded(LodestarError):
    """The server is over capacity; the client may retry later (-> RESOURCE_EXHAUSTED, with the
    trailing metadata `retry-after-ms` when `retry_after_ms` is set)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(LodestarError):
    """Not ready yet (model loading) or shutting down (-> UNAVAILABLE)."""


class DeadlineExceeded(LodestarError):
    """The request's deadline passed before its work ran (-> DEADLINE_EXCEEDED)."""


class FailedPrecondition(LodestarError):
    """The request is valid but the system is not in a state to run it, e.g. an operation the
    collection's backend does not offer (-> FAILED_PRECONDITION); the message says what to do instead."""


class Cancelled(LodestarError):
    """The caller went away or the server is shutting down; the work was stopped (-> CANCELLED)."""


MAX_SHOWN = 200  # characters of a caller's value an error message repeats


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """A caller's value for an error message: its repr, cut to `limit` characters plus its length,
    so a huge value cannot blow up the status message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else len(text)
    return f"{text[:limit]}... ({size} characters)" if isinstance(value, str) else f"{text[:limit]}... (length {size})"
