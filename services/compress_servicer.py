"""CompressService: converts, runs the (blocking) engine call off the event loop, converts back."""

from __future__ import annotations

import asyncio

import grpc

from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.compress_ctx.v1 import compress_pb2_grpc as cpb_grpc
from lodestar.services import convert
from lodestar.services.runtime import Runtime


class CompressServicer(cpb_grpc.CompressServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Compress(self, request: cpb.CompressRequest, context: grpc.aio.ServicerContext) -> cpb.CompressResponse:
        engine = self.runtime.compress_engine()
        kwargs = convert.compress_kwargs(request)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, lambda: engine.compress(request.query, list(request.passages), **kwargs))
        return convert.compress_response(result)

    async def Info(self, request: cpb.CompressInfoRequest, context: grpc.aio.ServicerContext) -> cpb.CompressInfo:
        engine = self.runtime.compress_engine()
        return convert.compress_info(engine.info(), engine.config.default_budget_ratio)
