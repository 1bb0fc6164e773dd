"""RetrieveService: converts, runs the (blocking) engine call off the event loop, converts back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services import convert
from lodestar.services.runtime import Runtime

T = TypeVar("T")


class RetrieveServicer(rpb_grpc.RetrieveServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def CreateCollection(self, request: rpb.CreateCollectionRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        config = convert.collection_config(request.config)
        stats = await self._run(engine.create, config)
        await self.runtime.refresh_collection_health()
        return convert.stats_pb(stats, config)

    async def DropCollection(self, request: rpb.DropCollectionRequest, context: grpc.aio.ServicerContext) -> rpb.DropCollectionResponse:
        await self._run(self.runtime.retrieve_engine().drop, request.name)
        await self.runtime.refresh_collection_health()
        return rpb.DropCollectionResponse()

    async def ListCollections(self, request: rpb.ListCollectionsRequest, context: grpc.aio.ServicerContext) -> rpb.ListCollectionsResponse:
        engine = self.runtime.retrieve_engine()
        stats = await self._run(engine.list)
        return rpb.ListCollectionsResponse(collections=[convert.stats_pb(s) for s in stats])

    async def Upsert(self, request: rpb.UpsertRequest, context: grpc.aio.ServicerContext) -> rpb.UpsertResponse:
        docs = convert.documents(list(request.documents))
        n_docs, n_chunks = await self._run(self.runtime.retrieve_engine().upsert, request.collection, docs)
        return rpb.UpsertResponse(documents=n_docs, chunks=n_chunks)

    async def Delete(self, request: rpb.DeleteRequest, context: grpc.aio.ServicerContext) -> rpb.DeleteResponse:
        deleted = await self._run(self.runtime.retrieve_engine().delete, request.collection, list(request.ids))
        return rpb.DeleteResponse(deleted=deleted)

    async def Get(self, request: rpb.GetRequest, context: grpc.aio.ServicerContext) -> rpb.GetResponse:
        docs = await self._run(self.runtime.retrieve_engine().get, request.collection, list(request.ids))
        return rpb.GetResponse(documents=[convert.document_pb(d) for d in docs], found=[d is not None for d in docs])

    async def Search(self, request: rpb.SearchRequest, context: grpc.aio.ServicerContext) -> rpb.SearchResponse:
        results = await self._run(self.runtime.retrieve_engine().search, request.collection, convert.search_request(request))
        return convert.search_response(results)

    async def Snapshot(self, request: rpb.SnapshotRequest, context: grpc.aio.ServicerContext) -> rpb.SnapshotResponse:
        manifest = await self._run(self.runtime.retrieve_engine().snapshot, request.collection)
        return rpb.SnapshotResponse(manifest_json=json.dumps(manifest))

    async def Restore(self, request: rpb.RestoreRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        stats = await self._run(engine.restore, request.collection, Path(request.path))
        await self.runtime.refresh_collection_health()
        return convert.stats_pb(stats)

    async def Rebuild(self, request: rpb.RebuildRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        stats = await self._run(engine.rebuild, request.collection)
        await self.runtime.refresh_collection_health()
        return convert.stats_pb(stats)

    async def Stats(self, request: rpb.StatsRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        stats = await self._run(engine.stats, request.collection)
        return convert.stats_pb(stats, await self._run(engine.config, request.collection))
