"""The asyncio client: the same methods as `Client`, awaited (streaming ones are async iterators).

async with AsyncClient("127.0.0.1:50051") as c:
    hits = await c.search("docs", "what is a suffix array?", k=5)
    async for chunk in c.generate_stream("Once upon a time"):
        print(chunk.text, end="")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import grpc

from lodestar.services.client.calls import Calls, Split, Stream, Unary, Upload
from lodestar.services.client.channel import PEM, ChannelConfig, Security, aio_channel, with_overrides
from lodestar.services.client.sync import STUBS, error
from lodestar.services.client.types import ClientError

T = TypeVar("T")


class AsyncClient(Calls):
    """`Client` for asyncio (grpc.aio): every unary method returns an awaitable of what Client's returns;
    embed_stream, generate_stream, answer_stream and watch_job return async iterators. Create it inside
    the event loop that uses it. TLS, the token and load balancing as for Client."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        timeout: float | None = 60.0,
        *,
        load_balancing: str | None = None,
        channel: ChannelConfig | None = None,
        tls: bool = False,
        ca: PEM | None = None,
        cert: PEM | None = None,
        key: PEM | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._security = Security.of(tls, ca, cert, key, token)
        self._metadata = self._security.metadata()
        self._channel = aio_channel(address, with_overrides(channel, load_balancing=load_balancing), self._security)
        self._stubs = {name: stub(self._channel) for name, stub in STUBS.items()}
        self._max_texts: int | None = None

    def _method(self, rpc: tuple[str, str]) -> Any:
        """The stub's method with this client's call metadata (the token) bound."""
        return partial(getattr(self._stubs[rpc[0]], rpc[1]), metadata=self._metadata)

    def _run(self, plan: Any) -> Any:
        if isinstance(plan, Stream):
            return self._stream(plan)
        return self._call(plan)

    async def _call(self, plan: Any) -> Any:
        try:
            if isinstance(plan, Unary):
                return plan.read(await self._method(plan.rpc)(plan.request, timeout=plan.timeout))
            if isinstance(plan, Upload):
                return plan.read(await self._method(plan.rpc)(iter(plan.requests), timeout=plan.timeout))
            if isinstance(plan, Split):
                method = self._method(plan.rpc)
                per = await self._per_request(plan.count)
                return plan.merge([plan.read(await method(r, timeout=plan.timeout)) for r in plan.make(per)])
        except grpc.RpcError as exc:
            if isinstance(plan, Unary) and plan.on_error is not None:
                return plan.on_error(exc)
            raise error(exc, self._security) from None
        raise TypeError(f"unknown plan {plan!r}")

    async def _per_request(self, count: int) -> int:
        """Texts per Embed request: the server's limit (asked once), or all of them when it cannot say."""
        if count <= 1:
            return 1
        if self._max_texts is None:
            try:
                self._max_texts = (await self.info()).max_texts_per_request or count  # type: ignore[misc]
            except ClientError:
                return count
        return self._max_texts

    async def _stream(self, plan: Stream) -> AsyncIterator[Any]:
        """Iterate a response stream; leaving the loop early cancels the call (the server stops)."""
        call = self._method(plan.rpc)(iter(plan.request) if plan.bidi else plan.request, timeout=plan.timeout)
        first = True
        try:
            async for response in call:
                for item in plan.read(response, first):
                    yield item
                first = False
        except grpc.RpcError as exc:
            raise error(exc, self._security) from None
        finally:
            call.cancel()

    def _fold(self, items: AsyncIterator[Any], fold: Callable[[Iterable[Any]], T]) -> Any:
        async def gather() -> T:
            return fold([item async for item in items])

        return gather()

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until the server reports SERVING (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while (status := await self.health()) != "SERVING":  # type: ignore[misc]
            if time.monotonic() > deadline:
                raise ClientError(
                    "DEADLINE_EXCEEDED", f"{self.address} not SERVING after {timeout:.0f}s (last: {status})"
                )
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
