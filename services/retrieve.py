"""RetrieveService: its servicer and its proto conversion. The blocking engine calls run off the event loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from lodestar.errors import InvalidInput
from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services.runtime import Runtime
from lodestar.services.wire import chosen, enum_to_name, json_object, set_fields, stored_name_to_enum, to_json
from lodestar.services.work import run_blocking

T = TypeVar("T")

# CollectionConfig's optional fields: unset = the engine's default
_CONFIG_OPTIONAL = ("chunk_tokens", "chunk_overlap", "sparse_top_k", "query_top_k", "query_idf")
_CONFIG_STRINGS = (
    "name",
    "mode",
    "query_prompt",
    "query_instruction",
    "doc_prompt",
    "doc_instruction",
    "adapter",
    "index",
    "sparse_mode",
    "sparse_adapter",
)
# SearchOptions' scalar fields that pass through as they are when set
_SEARCH_OPTIONAL = ("k", "alpha", "rrf_k", "include_text", "feedback_chunks", "feedback_weight", "length_norm")


def config_from_pb(c: rpb.CollectionConfig) -> rt.CollectionConfig:
    """Unset (empty, zero, absent) fields keep CollectionConfig's defaults."""
    kw: dict[str, Any] = {name: getattr(c, name) for name in _CONFIG_STRINGS if getattr(c, name)}
    kw["name"] = c.name  # required: an empty one is refused by the engine, naming the rule
    kw |= set_fields(c, _CONFIG_OPTIONAL)
    if c.dimensions:
        kw["dimensions"] = c.dimensions
    if c.shards:
        kw["shards"] = c.shards
    if metric := chosen(rpb.Metric, c.metric_kind, c.metric, "metric_kind"):
        kw["metric"] = metric
    if sparse := chosen(rpb.SparseKind, c.sparse_kind, c.sparse, "sparse_kind"):
        kw["sparse"] = sparse
    if backend := enum_to_name(rpb.Backend, c.backend, "backend"):
        kw["backend"] = backend
    if dense := enum_to_name(rpb.DenseKind, c.dense_kind, "dense_kind"):
        kw["dense"] = dense
    return rt.CollectionConfig(**kw)


def config_to_pb(c: rt.CollectionConfig) -> rpb.CollectionConfig:
    """Both spellings of metric and sparse are filled, so clients of the first release read them too."""
    fields = {
        f: getattr(c, f) for f in (*_CONFIG_STRINGS, *_CONFIG_OPTIONAL, "dimensions", "shards", "metric", "sparse")
    }
    return rpb.CollectionConfig(
        **fields,
        metric_kind=stored_name_to_enum(rpb.Metric, c.metric),
        sparse_kind=stored_name_to_enum(rpb.SparseKind, c.sparse),
        backend=stored_name_to_enum(rpb.Backend, c.backend),
        dense_kind=stored_name_to_enum(rpb.DenseKind, c.dense),
    )


def documents_from_pb(docs: list[rpb.Document]) -> list[rt.Document]:
    return [
        rt.Document(
            id=d.id, text=d.text, metadata=json_object(d.metadata_json, f"document {i} ({d.id[:200]!r}) metadata")
        )
        for i, d in enumerate(docs)
    ]


def document_to_pb(d: rt.Document | None) -> rpb.Document:
    return rpb.Document() if d is None else rpb.Document(id=d.id, text=d.text, metadata_json=to_json(d.metadata))


def filters_from_pb(filters: Any) -> tuple[rt.Filter, ...]:
    out = []
    for i, f in enumerate(filters):
        where = f"filter {i} on {f.field[:200]!r}"
        try:
            value = json.loads(f.value_json) if f.value_json else None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: value_json is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise InvalidInput(
                f"{where}: value_json is nested too deeply: give a scalar, or a list of scalars for in/nin"
            ) from None
        out.append(
            rt.Filter(field=f.field, op=chosen(rpb.FilterOp, f.operator, f.op, where + ": operator"), value=value)
        )
    return tuple(out)


def search_options_from_pb(o: rpb.SearchOptions) -> dict[str, Any]:
    """The set fields of a SearchOptions as keyword arguments of the consumer's dataclass (Search's
    SearchRequest, Answer's AnswerRequest): unset = its default."""
    kw = set_fields(o, _SEARCH_OPTIONAL)
    names = {
        "retriever": enum_to_name(rpb.Retriever, o.retriever, "retriever"),
        "fusion": enum_to_name(rpb.Fusion, o.fusion, "fusion"),
    }
    return kw | {k: v for k, v in names.items() if v} | _filters_kw(o.filters)


def _legacy_search_options(r: Any) -> dict[str, Any]:
    """The first release's spelling of the same options, fields of SearchRequest and AnswerRequest
    themselves (retriever and fusion as strings)."""
    kw = set_fields(r, tuple(f for f in _SEARCH_OPTIONAL if f in r.DESCRIPTOR.fields_by_name))
    return kw | {k: getattr(r, k) for k in ("retriever", "fusion") if getattr(r, k)} | _filters_kw(r.filters)


def _filters_kw(filters: Any) -> dict[str, Any]:
    return {"filters": filters_from_pb(filters)} if filters else {}


def search_kwargs(r: Any, field: str) -> dict[str, Any]:
    """Options of a request that holds a SearchOptions in `field`; without it, its deprecated fields."""
    return search_options_from_pb(getattr(r, field)) if r.HasField(field) else _legacy_search_options(r)


def search_from_pb(r: rpb.SearchRequest) -> rt.SearchRequest:
    return rt.SearchRequest(queries=list(r.queries), **search_kwargs(r, "options"))


def hit_to_pb(h: rt.Hit) -> rpb.Hit:
    return rpb.Hit(
        id=h.id,
        score=h.score,
        text=h.text,
        metadata_json=to_json(h.metadata),
        chunk=h.chunk,
        chunk_text=h.chunk_text,
        dense_score=h.dense_score,
        sparse_score=h.sparse_score,
    )


def stats_to_pb(s: rt.CollectionStats, config: rt.CollectionConfig | None = None) -> rpb.CollectionStats:
    return rpb.CollectionStats(
        name=s.name,
        documents=s.documents,
        chunks=s.chunks,
        index=s.index,
        trained=s.trained,
        index_vectors=s.index_vectors,
        bytes=s.bytes,
        dimensions=s.dimensions,
        sparse=s.sparse,
        sparse_kind=stored_name_to_enum(rpb.SparseKind, s.sparse),
        status=s.status,
        note=s.note,
        config=config_to_pb(config) if config else None,
        dense_kind=stored_name_to_enum(rpb.DenseKind, s.dense),
        calibration_json=to_json(s.calibration) if s.calibration else "",
    )


class RetrieveServicer(rpb_grpc.RetrieveServiceServicer):
    SERVICE = rpb.DESCRIPTOR.services_by_name["RetrieveService"]

    @staticmethod
    def add_to_server(servicer: RetrieveServicer, server: grpc.aio.Server) -> None:
        rpb_grpc.add_RetrieveServiceServicer_to_server(servicer, server)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _run(self, fn: Callable[..., T], *args: Any, context: grpc.aio.ServicerContext | None = None) -> T:
        """A blocking engine call off the loop, stopped at its next checkpoint once the call is gone."""
        return await run_blocking(self.runtime.tokens, context, fn, *args)

    async def CreateCollection(
        self, request: rpb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        config = config_from_pb(request.config)
        stats = await self._run(engine.create, config)
        await self.runtime.refresh_collection_health()
        return stats_to_pb(stats, config)

    async def DropCollection(
        self, request: rpb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> rpb.DropCollectionResponse:
        await self._run(self.runtime.retrieve_engine().drop, request.name)
        await self.runtime.refresh_collection_health()
        return rpb.DropCollectionResponse()

    async def ListCollections(
        self, request: rpb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ListCollectionsResponse:
        stats = await self._run(self.runtime.retrieve_engine().list)
        return rpb.ListCollectionsResponse(collections=[stats_to_pb(s) for s in stats])

    async def Upsert(self, request: rpb.UpsertRequest, context: grpc.aio.ServicerContext) -> rpb.UpsertResponse:
        engine = self.runtime.retrieve_engine()
        with self.runtime.admit("documents", len(request.documents), context):  # before any work
            docs = documents_from_pb(list(request.documents))
            n_docs, n_chunks = await self._run(engine.upsert, request.collection, docs, context=context)
        return rpb.UpsertResponse(documents=n_docs, chunks=n_chunks)

    async def Delete(self, request: rpb.DeleteRequest, context: grpc.aio.ServicerContext) -> rpb.DeleteResponse:
        deleted = await self._run(
            self.runtime.retrieve_engine().delete, request.collection, list(request.ids), context=context
        )
        return rpb.DeleteResponse(deleted=deleted)

    async def Get(self, request: rpb.GetRequest, context: grpc.aio.ServicerContext) -> rpb.GetResponse:
        docs = await self._run(self.runtime.retrieve_engine().get, request.collection, list(request.ids))
        return rpb.GetResponse(documents=[document_to_pb(d) for d in docs], found=[d is not None for d in docs])

    async def Search(self, request: rpb.SearchRequest, context: grpc.aio.ServicerContext) -> rpb.SearchResponse:
        engine, search = self.runtime.retrieve_engine(), search_from_pb(request)
        with self.runtime.admit_texts(search.queries, context):
            results = await self._run(engine.search, request.collection, search, context=context)
        return rpb.SearchResponse(results=[rpb.QueryResult(hits=[hit_to_pb(h) for h in hits]) for hits in results])

    async def Snapshot(self, request: rpb.SnapshotRequest, context: grpc.aio.ServicerContext) -> rpb.SnapshotResponse:
        manifest = await self._run(self.runtime.retrieve_engine().snapshot, request.collection)
        return rpb.SnapshotResponse(manifest_json=json.dumps(manifest))

    async def Restore(self, request: rpb.RestoreRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        stats = await self._run(self.runtime.retrieve_engine().restore, request.collection, Path(request.path))
        await self.runtime.refresh_collection_health()
        return stats_to_pb(stats)

    async def Rebuild(self, request: rpb.RebuildRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        stats = await self._run(self.runtime.retrieve_engine().rebuild, request.collection)
        await self.runtime.refresh_collection_health()
        return stats_to_pb(stats)

    async def Calibrate(self, request: rpb.CalibrateRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        await self._run(engine.calibrate, request.collection, *set_fields(request, ("seed",)).values())
        return stats_to_pb(await self._run(engine.stats, request.collection))

    async def Stats(self, request: rpb.StatsRequest, context: grpc.aio.ServicerContext) -> rpb.CollectionStats:
        engine = self.runtime.retrieve_engine()
        stats = await self._run(engine.stats, request.collection)
        return stats_to_pb(stats, await self._run(engine.config, request.collection))
