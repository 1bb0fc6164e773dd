"""EmbedService: its servicer and its proto conversion. No model logic here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc

import lodestar
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.services.runtime import Runtime
from lodestar.services.wire import enum_to_name

STREAM_WINDOW = 8  # requests of one stream in flight at once
TOKEN_PREPEND_FIELDS: tuple[Literal["start_layer", "end_layer", "output_layer"], ...] = (
    "start_layer",
    "end_layer",
    "output_layer",
)


def options_from_pb(req: pb.EmbedRequest) -> EmbedOptions:
    """The request's options; unset fields keep EmbedOptions' defaults (the engine's)."""
    tp, sp = req.token_prepend, req.sparse
    kw: dict[str, Any] = {name: getattr(tp, name) for name in TOKEN_PREPEND_FIELDS if tp.HasField(name)}
    if req.HasField("normalize"):
        kw["normalize"] = req.normalize
    if sp.enabled:
        kw.update(
            sparse=True,
            sparse_top_k=sp.top_k,
            sparse_threshold=sp.threshold,
            with_dense=sp.with_dense,
            sparse_tokens=sp.return_tokens,
        )
    return EmbedOptions(
        mode=req.mode,
        prompt=req.prompt,
        instruction=req.instruction,
        adapter=req.adapter,
        dimensions=req.dimensions,
        dtype=enum_to_name(pb.Dtype, req.dtype, "dtype") or "float32",
        truncate=enum_to_name(pb.Truncate, req.truncate, "truncate") != "none",
        max_tokens=req.max_tokens,
        **kw,
    )


def response_to_pb(result: EmbedResult, request_id: str = "") -> pb.EmbedResponse:
    tokens = result.sparse_tokens or [[] for _ in result.sparse or ()]
    return pb.EmbedResponse(
        embeddings=pb.Embeddings(
            data=result.packed.data,
            shape=list(result.packed.shape),
            dtype=pb.Dtype.Value("DTYPE_" + result.packed.dtype.upper()),
        )
        if result.has_dense
        else None,
        sparse=[
            pb.SparseVector(ids=i.tolist(), weights=w.tolist(), tokens=t)
            for (i, w), t in zip(result.sparse or (), tokens)
        ],
        token_counts=result.token_counts,
        truncated=result.truncated,
        model=result.model,
        mode=result.mode,
        request_id=request_id,
    )


def info_to_pb(info: dict[str, Any]) -> pb.InfoResponse:
    modes = [pb.ModeInfo(name=n, description=d, default_prompt=p) for n, d, p in info["modes"]]
    return pb.InfoResponse(**{**info, "modes": modes}, version=lodestar.__version__)


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    SERVICE = pb.DESCRIPTOR.services_by_name["EmbedService"]

    @staticmethod
    def add_to_server(servicer: EmbedServicer, server: grpc.aio.Server) -> None:
        pb_grpc.add_EmbedServiceServicer_to_server(servicer, server)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        engine = self.runtime.embed_engine()
        with self.runtime.admit_texts(request.texts, context):
            result = await engine.embed_async(
                list(request.texts), options_from_pb(request), timeout=context.time_remaining()
            )
        return response_to_pb(result, request.request_id)

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
            with self.runtime.admit_texts(req.texts, context):
                result = await engine.embed_async(
                    list(req.texts), options_from_pb(req), timeout=context.time_remaining()
                )
            return response_to_pb(result, req.request_id)

        async def reader() -> None:
            async for req in requests:
                task = asyncio.ensure_future(one(req))
                running.add(task)
                task.add_done_callback(running.discard)
                # one that fails after the stream has ended (on an earlier error) is not reported twice
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
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
        return info_to_pb(self.runtime.embed_engine().info())
