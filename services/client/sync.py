"""The blocking client: `from lodestar import Client`.

with Client("127.0.0.1:50051") as c:
    vecs = c.embed(["hello", "world"], mode="prompteol").vectors   # (2, 576) float32
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from lodestar.compress_ctx.v1 import compress_pb2_grpc as cpb_grpc
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.generate.v1 import generate_pb2_grpc as gpb_grpc
from lodestar.retrieve.v1 import index_pb2_grpc as ipb_grpc
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services.client.calls import Calls, Split, Stream, Unary, Upload
from lodestar.services.client.channel import PEM, ChannelConfig, Security, sync_channel, with_overrides
from lodestar.services.client.types import ClientError

T = TypeVar("T")
STUBS = {
    "embed": pb_grpc.EmbedServiceStub,
    "retrieve": rpb_grpc.RetrieveServiceStub,
    "index": ipb_grpc.IndexServiceStub,
    "compress": cpb_grpc.CompressServiceStub,
    "generate": gpb_grpc.GenerateServiceStub,
    "health": health_pb2_grpc.HealthStub,
}


def error(exc: grpc.RpcError, security: Security | None = None) -> ClientError:
    code, details = exc.code().name, exc.details() or ""
    trailers: Any = exc.trailing_metadata() or ()
    hint = next((value for key, value in trailers if key == "retry-after-ms"), None)
    retry = int(hint) if isinstance(hint, str) and hint.isdigit() else None
    return ClientError(code, security.explain(code, details) if security else details, retry)


class Client(Calls):
    """Talks to a Lodestar server (`address`: host:port, or dns:///name:port for several replicas,
    balanced per call). `timeout` is the default deadline of unary calls in seconds (None: none);
    `load_balancing` is how calls spread over the addresses a name resolves to: round_robin (the
    default: each call to the next, e.g. the pods behind a headless Service) or pick_first;
    `channel` tunes message size, keepalive and retries (UNAVAILABLE, RESOURCE_EXHAUSTED, with backoff). TLS: `tls=True` (the system's roots) or `ca` (the server's CA: a path or PEM
    bytes); `cert` and `key` present a client certificate (mTLS); `token` is sent as a bearer token."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        timeout: float | None = 60.0,
        *,
        max_message_bytes: int | None = None,
        load_balancing: str | None = None,
        channel: ChannelConfig | None = None,
        tls: bool = False,
        ca: PEM | None = None,
        cert: PEM | None = None,
        key: PEM | None = None,
        token: str | None = None,
    ) -> None:
        config = with_overrides(channel, max_message_bytes=max_message_bytes, load_balancing=load_balancing)
        self.address = address
        self.timeout = timeout
        self._security = Security.of(tls, ca, cert, key, token)
        self._metadata = self._security.metadata()
        self._channel = sync_channel(address, config, self._security)
        self._stubs = {name: stub(self._channel) for name, stub in STUBS.items()}
        self._max_texts: int | None = None

    def _method(self, rpc: tuple[str, str]) -> Any:
        """The stub's method with this client's call metadata (the token) bound."""
        return partial(getattr(self._stubs[rpc[0]], rpc[1]), metadata=self._metadata)

    def _run(self, plan: Any) -> Any:
        if isinstance(plan, Stream):
            return self._stream(plan)
        try:
            if isinstance(plan, Unary):
                return plan.read(self._method(plan.rpc)(plan.request, timeout=plan.timeout))
            if isinstance(plan, Upload):
                return plan.read(self._method(plan.rpc)(iter(plan.requests), timeout=plan.timeout))
            if isinstance(plan, Split):
                method = self._method(plan.rpc)
                parts = [plan.read(method(r, timeout=plan.timeout)) for r in plan.make(self._per_request(plan.count))]
                return plan.merge(parts)
        except grpc.RpcError as exc:
            if isinstance(plan, Unary) and plan.on_error is not None:
                return plan.on_error(exc)
            raise error(exc, self._security) from None
        raise TypeError(f"unknown plan {plan!r}")

    def _per_request(self, count: int) -> int:
        """Texts per Embed request: the server's limit (asked once), or all of them when it cannot say."""
        if count <= 1:
            return 1
        if self._max_texts is None:
            try:
                self._max_texts = self.info().max_texts_per_request or count
            except ClientError:
                return count
        return self._max_texts

    def _stream(self, plan: Stream) -> Iterator[Any]:
        """Iterate a response stream; leaving the loop early cancels the call (the server stops)."""
        call = self._method(plan.rpc)(plan.request, timeout=plan.timeout)
        first = True
        try:
            for response in call:
                yield from plan.read(response, first)
                first = False
        except grpc.RpcError as exc:
            raise error(exc, self._security) from None
        finally:
            call.cancel()

    def _fold(self, items: Iterable[Any], fold: Callable[[Iterable[Any]], T]) -> T:
        return fold(items)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server reports SERVING (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while (status := self.health()) != "SERVING":
            if time.monotonic() > deadline:
                raise ClientError(
                    "DEADLINE_EXCEEDED", f"{self.address} not SERVING after {timeout:.0f}s (last: {status})"
                )
            time.sleep(0.2)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
