"""GenerateService: Generate and Answer stream from a worker thread; cancelling the call stops the work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from lodestar.errors import InvalidInput
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.generate.v1 import generate_pb2_grpc as gpb_grpc
from lodestar.services import convert
from lodestar.services.runtime import Runtime
from lodestar.services.streaming import iterate_in_thread


class GenerateServicer(gpb_grpc.GenerateServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Generations hold a thread for their whole length: their own pool, so that they never
        # starve the default executor the other services' calls run on. The engine refuses more
        # than max_concurrent_generations; one spare thread runs the refusals.
        self._pool = ThreadPoolExecutor(runtime.settings.max_concurrent_generations + 1, thread_name_prefix="lodestar-gen")

    async def Generate(self, request: gpb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[gpb.GenerateChunk]:
        engine = self.runtime.generate_engine()
        kwargs = convert.generate_args(request)
        async for chunk in iterate_in_thread(lambda cancel: engine.stream(cancel=cancel, **kwargs), self._pool):
            yield convert.generate_chunk_pb(chunk)

    async def Answer(self, request: gpb.AnswerRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[gpb.AnswerChunk]:
        pipeline = self.runtime.answer_pipeline()
        req = convert.answer_request(request)
        async for item in iterate_in_thread(lambda cancel: pipeline.answer(req, cancel), self._pool):
            yield convert.answer_chunk_pb(item)

    async def ListDatastores(self, request: gpb.ListDatastoresRequest, context: grpc.aio.ServicerContext) -> gpb.ListDatastoresResponse:
        engine = self.runtime.generate_engine()
        stores = await asyncio.get_running_loop().run_in_executor(None, engine.list_datastores)
        return gpb.ListDatastoresResponse(datastores=[convert.datastore_info_pb(d) for d in stores])

    async def AddToDatastore(
        self, requests: AsyncIterator[gpb.AddToDatastoreRequest], context: grpc.aio.ServicerContext
    ) -> gpb.DatastoreInfo:
        """Collect the whole stream, then write one segment: a broken upload changes nothing."""
        engine = self.runtime.generate_engine()
        name, texts, compact, chars = "", [], False, 0
        async for req in requests:
            if req.name and name and req.name != name:
                raise InvalidInput(f"one AddToDatastore call writes one datastore; got {name!r} then {req.name!r}")
            name = name or req.name
            texts.extend(req.texts)
            compact = compact or req.compact
            if len(texts) > engine.config.max_add_texts:
                raise InvalidInput(f"more than max_add_texts={engine.config.max_add_texts} texts in one call; split the upload")
            chars += sum(len(t) for t in req.texts)
            if chars > engine.config.max_add_chars:  # refused while streaming, before the rest is held
                raise InvalidInput(f"more than max_add_chars={engine.config.max_add_chars} characters in one call; split the upload")
        info = await asyncio.get_running_loop().run_in_executor(None, engine.add_texts, name, texts, compact)
        return convert.datastore_info_pb(info)
