"""EmbedService: converts, calls the engine, converts back. No model logic here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

import lodestar
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.services import convert
from lodestar.services.runtime import Runtime

STREAM_WINDOW = 8  # requests of one stream in flight at once


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        engine = self.runtime.embed_engine()
        result = await engine.embed_async(
            list(request.texts), convert.embed_options(request), timeout=context.time_remaining()
        )
        return convert.embed_response(result, request.request_id)

    async def EmbedStream(
        self, requests: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Pipelined: up to STREAM_WINDOW requests run at once; responses keep request order."""
        engine = self.runtime.embed_engine()
        window: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(maxsize=STREAM_WINDOW)
        # Every task started, not just those in the window: the reader may hold one it has not
        # put yet (window full); it must be cancelled too when the stream ends early.
        running: set[asyncio.Task] = set()

        async def one(req: pb.EmbedRequest) -> pb.EmbedResponse:
            result = await engine.embed_async(list(req.texts), convert.embed_options(req), timeout=context.time_remaining())
            return convert.embed_response(result, req.request_id)

        async def reader() -> None:
            async for req in requests:
                task = asyncio.ensure_future(one(req))
                running.add(task)
                task.add_done_callback(running.discard)
                await window.put(task)
            await window.put(None)

        feeding = asyncio.ensure_future(reader())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await feeding
        finally:
            feeding.cancel()
            for pending in list(running):
                pending.cancel()

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        return convert.info_response(self.runtime.embed_engine().info(), lodestar.__version__)
