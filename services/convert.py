"""The only module that converts between protobuf messages and domain objects."""

from __future__ import annotations

import json

from lodestar.embed.output import Packed, unpack
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.errors import InvalidInput
from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import retrieve_pb2 as rpb

DTYPE_TO_NAME = {
    pb.DTYPE_UNSPECIFIED: "float32",
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT16: "float16",
    pb.DTYPE_INT8: "int8",
    pb.DTYPE_BINARY: "binary",
}
NAME_TO_DTYPE = {name: code for code, name in DTYPE_TO_NAME.items() if code != pb.DTYPE_UNSPECIFIED}


def embed_options(req: pb.EmbedRequest) -> EmbedOptions:
    tp = req.token_prepend
    return EmbedOptions(
        mode=req.mode,
        prompt=req.prompt,
        instruction=req.instruction,
        adapter=req.adapter,
        dimensions=req.dimensions,
        normalize=req.normalize if req.HasField("normalize") else True,
        dtype=DTYPE_TO_NAME.get(req.dtype, f"<unknown enum {req.dtype}>"),
        truncate=req.truncate != pb.TRUNCATE_NONE,
        max_tokens=req.max_tokens,
        start_layer=tp.start_layer if tp.HasField("start_layer") else None,
        end_layer=tp.end_layer if tp.HasField("end_layer") else None,
        output_layer=tp.output_layer if tp.HasField("output_layer") else None,
    )


def embed_response(result: EmbedResult, request_id: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=pb.Embeddings(
            data=result.packed.data, shape=list(result.packed.shape), dtype=NAME_TO_DTYPE[result.packed.dtype]
        ),
        token_counts=result.token_counts,
        truncated=result.truncated,
        model=result.model,
        mode=result.mode,
        request_id=request_id,
    )


def info_response(info: dict, version: str) -> pb.InfoResponse:
    return pb.InfoResponse(
        model=info["model"],
        dimensions=info["dimensions"],
        max_tokens=info["max_tokens"],
        max_texts_per_request=info["max_texts_per_request"],
        modes=[pb.ModeInfo(name=n, description=d, default_prompt=p) for n, d, p in info["modes"]],
        default_mode=info["default_mode"],
        adapters=info["adapters"],
        dtypes=info["dtypes"],
        torch_dtype=info["torch_dtype"],
        device=info["device"],
        num_layers=info["num_layers"],
        version=version,
    )


# --- client side ----------------------------------------------------------------------------


def embed_request(texts: list[str], options: EmbedOptions, request_id: str = "") -> pb.EmbedRequest:
    if options.dtype not in NAME_TO_DTYPE:
        raise ValueError(f"unknown dtype {options.dtype!r}: valid are {', '.join(NAME_TO_DTYPE)}")
    tp = pb.TokenPrependOptions(
        start_layer=options.start_layer, end_layer=options.end_layer, output_layer=options.output_layer
    )
    return pb.EmbedRequest(
        texts=texts,
        mode=options.mode,
        prompt=options.prompt,
        instruction=options.instruction,
        adapter=options.adapter,
        dimensions=options.dimensions,
        normalize=options.normalize,
        dtype=NAME_TO_DTYPE[options.dtype],
        truncate=pb.TRUNCATE_END if options.truncate else pb.TRUNCATE_NONE,
        max_tokens=options.max_tokens,
        token_prepend=tp,
        request_id=request_id,
    )


def embed_result(resp: pb.EmbedResponse) -> EmbedResult:
    """Decode a response; `vectors` holds the array in its wire dtype (binary: 0/1 per dimension)."""
    e = resp.embeddings
    shape = (int(e.shape[0]), int(e.shape[1]))
    dtype = DTYPE_TO_NAME[e.dtype]
    return EmbedResult(
        vectors=unpack(e.data, shape, dtype),
        packed=Packed(data=e.data, shape=shape, dtype=dtype),
        token_counts=list(resp.token_counts),
        truncated=list(resp.truncated),
        model=resp.model,
        mode=resp.mode,
    )


def info_dict(resp: pb.InfoResponse) -> dict:
    return {
        "model": resp.model,
        "dimensions": resp.dimensions,
        "max_tokens": resp.max_tokens,
        "max_texts_per_request": resp.max_texts_per_request,
        "modes": [{"name": m.name, "description": m.description, "default_prompt": m.default_prompt} for m in resp.modes],
        "default_mode": resp.default_mode,
        "adapters": list(resp.adapters),
        "dtypes": list(resp.dtypes),
        "torch_dtype": resp.torch_dtype,
        "device": resp.device,
        "num_layers": resp.num_layers,
        "version": resp.version,
    }


# --- retrieval --------------------------------------------------------------------------------

def _json_object(text: str, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def collection_config(c: rpb.CollectionConfig) -> rt.CollectionConfig:
    d = rt.CollectionConfig(name=c.name)
    return rt.CollectionConfig(
        name=c.name,
        mode=c.mode or d.mode,
        query_prompt=c.query_prompt,
        query_instruction=c.query_instruction,
        doc_prompt=c.doc_prompt,
        doc_instruction=c.doc_instruction,
        adapter=c.adapter,
        dimensions=c.dimensions,
        metric=c.metric or d.metric,
        index=c.index or d.index,
        sparse=c.sparse or d.sparse,
        chunk_tokens=c.chunk_tokens if c.HasField("chunk_tokens") else d.chunk_tokens,
        chunk_overlap=c.chunk_overlap if c.HasField("chunk_overlap") else d.chunk_overlap,
    )


def collection_config_pb(c: rt.CollectionConfig) -> rpb.CollectionConfig:
    return rpb.CollectionConfig(
        name=c.name, mode=c.mode, query_prompt=c.query_prompt, query_instruction=c.query_instruction,
        doc_prompt=c.doc_prompt, doc_instruction=c.doc_instruction, adapter=c.adapter,
        dimensions=c.dimensions, metric=c.metric, index=c.index, sparse=c.sparse,
        chunk_tokens=c.chunk_tokens, chunk_overlap=c.chunk_overlap,
    )


def documents(docs: list[rpb.Document]) -> list[rt.Document]:
    return [
        rt.Document(id=d.id, text=d.text, metadata=_json_object(d.metadata_json, f"document {i} ({d.id!r}) metadata"))
        for i, d in enumerate(docs)
    ]


def document_pb(d: rt.Document | None) -> rpb.Document:
    if d is None:
        return rpb.Document()
    return rpb.Document(id=d.id, text=d.text, metadata_json=json.dumps(d.metadata, ensure_ascii=False))


def search_request(r: rpb.SearchRequest) -> rt.SearchRequest:
    filters = []
    for i, f in enumerate(r.filters):
        try:
            value = json.loads(f.value_json) if f.value_json else None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"filter {i} on {f.field!r}: value_json is not valid JSON ({exc.msg})") from None
        filters.append(rt.Filter(field=f.field, op=f.op, value=value))
    return rt.SearchRequest(
        queries=list(r.queries),
        k=r.k if r.HasField("k") else 10,
        retriever=r.retriever or "dense",
        fusion=r.fusion or "rrf",
        alpha=r.alpha if r.HasField("alpha") else 0.5,
        rrf_k=r.rrf_k if r.HasField("rrf_k") else 60,
        filters=tuple(filters),
        include_text=r.include_text if r.HasField("include_text") else True,
    )


def hit_pb(h: rt.Hit) -> rpb.Hit:
    return rpb.Hit(
        id=h.id, score=h.score, text=h.text, metadata_json=json.dumps(h.metadata, ensure_ascii=False),
        chunk=h.chunk, chunk_text=h.chunk_text, dense_score=h.dense_score, sparse_score=h.sparse_score,
    )


def search_response(results: list[list[rt.Hit]]) -> rpb.SearchResponse:
    return rpb.SearchResponse(results=[rpb.QueryResult(hits=[hit_pb(h) for h in hits]) for hits in results])


def stats_pb(s: rt.CollectionStats, config: rt.CollectionConfig | None = None) -> rpb.CollectionStats:
    return rpb.CollectionStats(
        name=s.name, documents=s.documents, chunks=s.chunks, index=s.index, trained=s.trained,
        index_vectors=s.index_vectors, bytes=s.bytes, dimensions=s.dimensions, sparse=s.sparse,
        status=s.status, note=s.note, config=collection_config_pb(config) if config else None,
    )


# client side


def stats_dict(s: rpb.CollectionStats) -> dict:
    return {
        "name": s.name, "documents": s.documents, "chunks": s.chunks, "index": s.index, "trained": s.trained,
        "index_vectors": s.index_vectors, "bytes": s.bytes, "dimensions": s.dimensions, "sparse": s.sparse,
        "status": s.status, "note": s.note,
    }


def hits(resp: rpb.SearchResponse) -> list[list[rt.Hit]]:
    return [
        [
            rt.Hit(
                id=h.id, score=h.score, text=h.text, metadata=json.loads(h.metadata_json or "{}"), chunk=h.chunk,
                chunk_text=h.chunk_text,
                dense_score=h.dense_score if h.HasField("dense_score") else None,
                sparse_score=h.sparse_score if h.HasField("sparse_score") else None,
            )
            for h in q.hits
        ]
        for q in resp.results
    ]
