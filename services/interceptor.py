"""One place that turns domain errors into gRPC status codes.

Typed errors keep their message (it says what was wrong and what is allowed), cut to
MAX_MESSAGE_CHARS so a status never outgrows the client's metadata limit; RESOURCE_EXHAUSTED carries
the trailing metadata `retry-after-ms` when the engine gave a hint. Anything else is logged with the
call's request id (x-request-id, the one in the access log) and reaches the client as INTERNAL
carrying only that id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from lodestar.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    LodestarError,
    NotFound,
    Overloaded,
    Unavailable,
)
from lodestar.services.observability import context as request_context

log = logging.getLogger(__name__)

STATUS: dict[type[LodestarError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}
MAX_MESSAGE_CHARS = 900  # a status message's UTF-8 bytes at most (clients cap metadata near 8 KB; fuzzing asks < 1 KB)
RETRY_AFTER = "retry-after-ms"
PUSHBACK = "grpc-retry-pushback-ms"


def cut(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, cut to `limit` UTF-8 bytes (what travels in the status) with a note of how long it was."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    note = f"... ({len(message)} characters, cut)"
    return data[: limit - len(note)].decode("utf-8", "ignore") + note


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception; unexpected ones are logged with a fresh request id."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls], cut(str(exc))
    info = request_context.current()
    request_id = info.request_id if info is not None else uuid.uuid4().hex[:16]
    log.error("unexpected error, request id %s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); the server log has the details"


class _RefusalLog:
    """Refusals are logged at most once per `every` seconds, with how many were refused meanwhile: under
    overload a line per refused call would add a log write to each refusal (the access log still
    counts every call, and the metrics every status)."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.last = -math.inf
        self.quiet = 0  # refusals since the last line

    def note(self, method: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.quiet += 1
            return
        more = f" ({self.quiet} more refused since the last such line)" if self.quiet else ""
        log.info("%s -> RESOURCE_EXHAUSTED: %s%s", method, message, more)
        self.last, self.quiet = now, 0


_refusals = _RefusalLog()


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if context.done():
        # The deadline passed or the client left while the work was finishing (its own deadline
        # check can beat gRPC's cancel of the handler): no status can be sent any more, and
        # abort() would fail inside gRPC. End the handler as a cancelled one.
        log.info("%s -> %s after the call had ended: %s", method, code.name, message)
        raise asyncio.CancelledError
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        _refusals.note(method, message)
    elif code != grpc.StatusCode.INTERNAL:
        log.info("%s -> %s: %s", method, code.name, message)
    retry = getattr(exc, "retry_after_ms", None)
    if retry is None:
        await context.abort(code, message)  # keeps the trailers already set (the request id)
    info = request_context.current()
    # both spellings: our documented hint, and gRPC's own pushback, which clients' retry policies obey
    trailers = [(RETRY_AFTER, str(int(retry))), (PUSHBACK, str(int(retry)))]
    if info is not None:
        trailers.append((request_context.REQUEST_ID_HEADER, info.request_id))
    await context.abort(code, message, trailing_metadata=tuple(trailers))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler (all four RPC shapes) so raised errors become statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, method), **kw)
        assert handler.stream_stream is not None  # a handler carries exactly one of the four
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream, method), **kw)


def _wrap_unary(fn: Callable, method: str) -> Callable:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return call


def _wrap_stream(fn: Callable, method: str) -> Callable:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = fn(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a coroutine that writes through context.write()
                await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return call
