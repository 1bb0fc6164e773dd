"""Python client: `from lodestar import Client`.

    with Client("127.0.0.1:50051") as c:
        vecs = c.embed(["hello", "world"], mode="prompteol").vectors   # (2, 576) float32
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.services import convert


class ClientError(Exception):
    """A call failed; `code` is the gRPC status name (e.g. INVALID_ARGUMENT), `message` the server's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _raise(exc: grpc.RpcError) -> ClientError:
    return ClientError(exc.code().name, exc.details() or "")  # type: ignore[attr-defined]


class Client:
    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = 60.0, max_message_bytes: int = 64 << 20) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._embed = pb_grpc.EmbedServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: list[str], *, timeout: float | None = None, **options: Any) -> EmbedResult:
        """Embed texts. Options: mode, prompt, instruction, adapter, dimensions, normalize, dtype
        (float32|float16|int8|binary), truncate, max_tokens, start_layer/end_layer/output_layer."""
        req = convert.embed_request(list(texts), EmbedOptions(**options))
        try:
            resp = self._embed.Embed(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return convert.embed_result(resp)

    def embed_stream(
        self, batches: Iterable[list[str]], *, timeout: float | None = None, **options: Any
    ) -> Iterator[EmbedResult]:
        """Stream many batches over one call; results come back in batch order."""
        opts = EmbedOptions(**options)
        reqs = (convert.embed_request(list(b), opts, request_id=str(i)) for i, b in enumerate(batches))
        try:
            for resp in self._embed.EmbedStream(reqs, timeout=timeout):
                yield convert.embed_result(resp)
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    def info(self) -> dict[str, Any]:
        try:
            return convert.info_dict(self._embed.Info(pb.InfoRequest(), timeout=self.timeout))
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    # --- health -------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN, or UNAVAILABLE when nothing answers."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server reports SERVING (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while (status := self.health()) != "SERVING":
            if time.monotonic() > deadline:
                raise ClientError("DEADLINE_EXCEEDED", f"{self.address} not SERVING after {timeout:.0f}s (last: {status})")
            time.sleep(0.2)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
