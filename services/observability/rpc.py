"""The outermost server interceptor: names each call (request id), times it, counts it, logs it.

For every RPC it takes the caller's `x-request-id` or makes one, makes it the current request (so
every log line of the call carries it, and auth can record the token's name), returns it in the
trailing metadata, and when the call ends (any status, streams included) observes the RPC metrics
and writes one access-log line on `lodestar.access`. It sits outside auth and the error interceptor,
so refusals and errors are counted and logged with the status the client got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from lodestar.services.observability.context import REQUEST_ID_HEADER, RequestInfo, enter, request_id_from
from lodestar.services.observability.metrics import RpcMetrics

access_log = logging.getLogger("lodestar.access")


def ended(context: grpc.aio.ServicerContext) -> str | None:
    """What the client saw of a call that ended under its handler: DEADLINE_EXCEEDED once its
    deadline passed, CANCELLED once it is done otherwise (the client left); None while it is live."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED" if context.done() else None


class ObserveInterceptor(grpc.aio.ServerInterceptor):
    """Request id, RPC metrics (when `metrics` is given) and the access log (when `access_log`)."""

    def __init__(self, metrics: RpcMetrics | None = None, access_log: bool = True) -> None:
        self.metrics = metrics
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        info = RequestInfo(request_id_from(details.invocation_metadata), details.method)
        enter(info)  # before the inner interceptors run: auth writes the token's name into it
        handler = await continuation(details)
        if handler is None:
            return handler
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, info), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, info), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream, info), **kw)
        assert handler.stream_stream is not None  # a handler carries exactly one of the four
        return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream, info), **kw)

    def _begin(self, info: RequestInfo, context: grpc.aio.ServicerContext) -> tuple[float, str]:
        """The call's start time and its peer. The peer is read here, while the call is alive: the
        C core's peer string belongs to the transport, and reading it after a cancel is a
        use-after-free (grpc/grpc#29069) that crashed a server whose streaming client had left."""
        enter(info)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, info.request_id),))
        if self.metrics is not None:
            self.metrics.begin(info.method)
        return time.perf_counter(), context.peer() if self.access_log else ""

    def _end(
        self, info: RequestInfo, context: grpc.aio.ServicerContext, begun: tuple[float, str], code: str | None
    ) -> None:
        start, peer = begun
        seconds = time.perf_counter() - start
        if code is None:  # returned or aborted: the status the context holds
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "OK"
        if self.metrics is not None:
            self.metrics.end(info.method, code, seconds)
        if self.access_log:
            access_log.info(
                "%s %s %.1fms peer=%s token=%s",
                info.method,
                code,
                seconds * 1000,
                peer,
                info.token,
                extra={
                    "fields": {
                        "method": info.method,
                        "code": code,
                        "duration_ms": round(seconds * 1000, 3),
                        "peer": peer,
                        "token": info.token,
                    }
                },
            )

    def _unary(self, fn: Callable, info: RequestInfo) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            begun = self._begin(info, context)
            code: str | None = None
            try:
                return await fn(request, context)
            except asyncio.CancelledError:
                code = ended(context) or "CANCELLED"
                raise
            except grpc.aio.AbortError:
                raise
            except BaseException:
                code = ended(context) or "UNKNOWN"
                raise
            finally:
                self._end(info, context, begun, code)

        return call

    def _stream(self, fn: Callable, info: RequestInfo) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            begun = self._begin(info, context)
            code: str | None = None
            try:
                result = fn(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # a coroutine that writes through context.write()
                    await result
            except (asyncio.CancelledError, GeneratorExit):
                code = ended(context) or "CANCELLED"
                raise
            except grpc.aio.AbortError:
                raise
            except BaseException:
                code = ended(context) or "UNKNOWN"
                raise
            finally:
                self._end(info, context, begun, code)

        return call
