"""RetrieveService on the client side: requests from Python values, results from responses (the
mirror of lodestar.services.retrieve)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services.client.types import CollectionInfo
from lodestar.services.wire import name_to_enum, to_json

FilterSpec = tuple[str, str, Any] | dict[str, Any]  # (field, op, value) or {"field", "op", "value"}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(rt.CollectionConfig)}


def config(name: str, **options: Any) -> rpb.CollectionConfig:
    """A CollectionConfig; metric and sparse go as their enums; unknown keys -> TypeError naming the valid ones."""
    unknown = set(options) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(
            f"unknown collection option(s) {sorted(unknown)}; valid are {', '.join(sorted(_CONFIG_FIELDS - {'name'}))}"
        )
    metric = name_to_enum(rpb.Metric, options.pop("metric", ""), "metric")
    sparse = name_to_enum(rpb.SparseKind, options.pop("sparse", ""), "sparse kind")
    backend = name_to_enum(rpb.Backend, options.pop("backend", ""), "backend")
    dense = name_to_enum(rpb.DenseKind, options.pop("dense", ""), "dense kind")
    return rpb.CollectionConfig(
        name=name, metric_kind=metric, sparse_kind=sparse, backend=backend, dense_kind=dense, **options
    )


def config_from_pb(c: rpb.CollectionConfig) -> rt.CollectionConfig:
    fields = {f: getattr(c, f) for f in _CONFIG_FIELDS - {"dense"}}
    if c.dense_kind:
        fields["dense"] = rpb.DenseKind.Name(c.dense_kind).removeprefix("DENSE_KIND_").lower()
    if c.metric_kind:
        fields["metric"] = rpb.Metric.Name(c.metric_kind).removeprefix("METRIC_").lower()
    if c.sparse_kind:
        fields["sparse"] = rpb.SparseKind.Name(c.sparse_kind).removeprefix("SPARSE_KIND_").lower()
    fields["backend"] = rpb.Backend.Name(c.backend).removeprefix("BACKEND_").lower() if c.backend else "faiss"
    return rt.CollectionConfig(**fields)


def collection_info(s: rpb.CollectionStats) -> CollectionInfo:
    return CollectionInfo(
        name=s.name,
        documents=s.documents,
        chunks=s.chunks,
        index=s.index,
        trained=s.trained,
        index_vectors=s.index_vectors,
        bytes=s.bytes,
        dimensions=s.dimensions,
        sparse=s.sparse,
        status=s.status,
        note=s.note,
        config=config_from_pb(s.config) if s.HasField("config") else None,
        dense=rpb.DenseKind.Name(s.dense_kind).removeprefix("DENSE_KIND_").lower() if s.dense_kind else "model",
        calibration=json.loads(s.calibration_json) if s.calibration_json else None,
    )


def document(d: dict[str, Any] | rt.Document) -> rpb.Document:
    """A document from a Document or a dict {"id", "text", "metadata"}."""
    if isinstance(d, dict):
        d = rt.Document(d["id"], d["text"], d.get("metadata") or {})
    return rpb.Document(id=d.id, text=d.text, metadata_json=to_json(d.metadata))


def document_from_pb(d: rpb.Document) -> rt.Document:
    return rt.Document(d.id, d.text, json.loads(d.metadata_json or "{}"))


def filters_pb(specs: Iterable[FilterSpec]) -> list[rpb.Filter]:
    out = []
    for f in specs:
        name, op, value = (f["field"], f["op"], f["value"]) if isinstance(f, dict) else f
        out.append(
            rpb.Filter(
                field=name, operator=name_to_enum(rpb.FilterOp, op, "filter operator"), value_json=json.dumps(value)
            )
        )
    return out


def search_options(
    *,
    k: int | None = None,
    retriever: str = "",
    fusion: str = "",
    alpha: float | None = None,
    rrf_k: int | None = None,
    filters: Iterable[FilterSpec] = (),
    include_text: bool | None = None,
    feedback_chunks: int | None = None,
    feedback_weight: float | None = None,
    length_norm: float | None = None,
) -> rpb.SearchOptions:
    """SearchOptions; None/"" leave a field unset, so the server's default applies."""
    return rpb.SearchOptions(
        k=k,
        retriever=name_to_enum(rpb.Retriever, retriever, "retriever"),
        fusion=name_to_enum(rpb.Fusion, fusion, "fusion"),
        alpha=alpha,
        rrf_k=rrf_k,
        filters=filters_pb(filters),
        include_text=include_text,
        feedback_chunks=feedback_chunks,
        feedback_weight=feedback_weight,
        length_norm=length_norm,
    )


def hit(h: Any) -> rt.Hit:
    return rt.Hit(
        id=h.id,
        score=h.score,
        text=h.text,
        metadata=json.loads(h.metadata_json or "{}"),
        chunk=h.chunk,
        chunk_text=h.chunk_text,
        dense_score=h.dense_score if h.HasField("dense_score") else None,
        sparse_score=h.sparse_score if h.HasField("sparse_score") else None,
    )


def hits(resp: rpb.SearchResponse) -> list[list[rt.Hit]]:
    return [[hit(h) for h in q.hits] for q in resp.results]
