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
    """The server is over capacity; the client may retry later (-> RESOURCE_EXHAUSTED)."""


class Unavailable(LodestarError):
    """Not ready yet (model loading) or shutting down (-> UNAVAILABLE)."""


class DeadlineExceeded(LodestarError):
    """The request's deadline passed before its work ran (-> DEADLINE_EXCEEDED)."""


class FailedPrecondition(LodestarError):
    """The request is valid but the system is not in a state to run it, e.g. an operation the
    collection's backend does not offer (-> FAILED_PRECONDITION); the message says what to do instead."""
