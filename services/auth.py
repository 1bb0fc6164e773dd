"""Bearer-token authentication and the scope every RPC needs, declared in one table.

With a tokens file (LODESTAR_TOKENS_FILE) every call but health and reflection must carry
`authorization: Bearer <token>`: none or an unknown one is UNAUTHENTICATED, one without the RPC's
scope PERMISSION_DENIED naming the scope. Without the file the server is open (the laptop default).
A method missing from `SCOPE_OF` is refused while authentication is on, and a test walks the
services' descriptors so that a new RPC without a scope fails it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from lodestar.services.observability.context import current
from lodestar.services.tokens import TokenFile

READ, WRITE, ADMIN, WORKER = "read", "write", "admin", "worker"

# Services anyone may call: probes and tooling need them before they hold a token.
OPEN_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)

# service -> method -> the scope a token needs to call it.
SCOPE_OF: dict[str, dict[str, str]] = {
    "lodestar.embed.v1.EmbedService": {"Embed": READ, "EmbedStream": READ, "Info": READ},
    "lodestar.retrieve.v1.RetrieveService": {
        "Search": READ,
        "Get": READ,
        "Stats": READ,
        "ListCollections": READ,
        "Upsert": WRITE,
        "Delete": WRITE,
        "CreateCollection": ADMIN,
        "DropCollection": ADMIN,
        "Snapshot": ADMIN,
        "Restore": ADMIN,
        "Rebuild": ADMIN,
        "Calibrate": ADMIN,
    },
    "lodestar.index.v1.IndexService": {
        "GetJob": READ,
        "WatchJob": READ,
        "ListJobs": READ,
        "SubmitJob": WRITE,
        "CancelJob": WRITE,
        "ResumeJob": WRITE,
        "FetchChunk": WORKER,
        "CommitChunk": WORKER,
        "FailChunk": WORKER,
    },
    "lodestar.compress.v1.CompressService": {"Compress": READ, "Info": READ},
    "lodestar.generate.v1.GenerateService": {
        "Generate": READ,
        "Answer": READ,
        "ListDatastores": READ,
        "AddToDatastore": WRITE,
    },
}
OPEN = ""  # scope_for's answer for an open service


def scope_for(method: str) -> str | None:
    """'/pkg.Service/Method' -> its scope, OPEN for health and reflection, None when undeclared."""
    service, _, name = method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return OPEN
    return SCOPE_OF.get(service, {}).get(name)


def bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's token against the RPC's scope before the handler runs."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        scope = scope_for(details.method)
        if handler is None or scope == OPEN:
            return handler
        refusal = self.refusal(details.method, scope, details.invocation_metadata)
        return handler if refusal is None else refusing(handler, *refusal)

    def refusal(
        self, method: str, scope: str | None, metadata: Sequence[tuple[str, Any]] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may go on, else the status and a message that names what is missing."""
        token = bearer(metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                "this server requires a bearer token: send `authorization: Bearer <token>` "
                "(Client(token=...), --token or LODESTAR_TOKEN)"
            )
        entry = self.tokens.identify(token)
        if entry is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "the bearer token is not one this server knows (revoked or mistyped)",
            )
        if (info := current()) is not None:
            info.token = entry.name
        if scope is None:
            return grpc.StatusCode.PERMISSION_DENIED, f"{method} has no scope declared, so no token may call it"
        if scope not in entry.scopes:
            return grpc.StatusCode.PERMISSION_DENIED, (
                f"{method} needs scope {scope!r}; token {entry.name!r} has {', '.join(sorted(entry.scopes))}"
            )
        return None


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code` before any work."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # never reached: makes this an async generator, as streaming handlers are

    kw: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.stream_stream_rpc_method_handler(stream, **kw)
