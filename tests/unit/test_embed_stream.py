"""EmbedStream's pipelining, driven directly with a fake engine: order, and that a client gone
mid-stream leaves no request of the stream running (each holds batcher queue slots)."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.services.embed import STREAM_WINDOW, EmbedServicer


class BlockingEngine:
    """embed_async never finishes until cancelled; records which requests started and were cancelled."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def embed_async(self, texts: list[str], options: Any, timeout: float | None = None) -> Any:
        self.started.append(texts[0])
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(texts[0])
            raise


class Context:
    def time_remaining(self) -> float | None:
        return None


def test_client_gone_mid_stream_cancels_every_started_request() -> None:
    engine = BlockingEngine()
    runtime = SimpleNamespace(
        embed_engine=lambda: engine, admit=lambda *args: nullcontext(), admit_texts=lambda *args: nullcontext()
    )
    servicer = EmbedServicer(runtime)  # type: ignore[arg-type]

    async def requests() -> Any:
        for i in range(3 * STREAM_WINDOW):
            yield pb.EmbedRequest(texts=[f"text {i}"])

    async def main() -> None:
        stream = servicer.EmbedStream(requests(), Context())  # type: ignore[arg-type]
        first = asyncio.ensure_future(stream.__anext__())
        for _ in range(50):  # let the reader fill the window
            await asyncio.sleep(0)
        assert len(engine.started) > STREAM_WINDOW
        first.cancel()  # the client cancels the RPC
        try:
            await first
        except asyncio.CancelledError:
            pass
        await stream.aclose()
        for _ in range(50):
            await asyncio.sleep(0)
        # checked before asyncio.run's shutdown cancels whatever is left
        assert sorted(engine.started) == sorted(engine.cancelled), (
            f"still running after the client left: {sorted(set(engine.started) - set(engine.cancelled))}"
        )

    asyncio.run(main())
