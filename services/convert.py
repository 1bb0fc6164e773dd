"""The only module that converts between protobuf messages and domain objects."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from lodestar.compress_ctx import types as ct
from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.embed.output import Packed, unpack
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.errors import InvalidInput
from lodestar.generate import types as gt
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.retrieve import types as rt
from lodestar.retrieve.prepare import TOO_DEEP
from lodestar.retrieve.v1 import index_pb2 as ipb
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
        sparse=req.sparse.enabled,
        sparse_top_k=req.sparse.top_k,
        sparse_threshold=req.sparse.threshold,
        with_dense=req.sparse.with_dense or not req.sparse.enabled,
        sparse_tokens=req.sparse.return_tokens,
    )


def embed_response(result: EmbedResult, request_id: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=pb.Embeddings(
            data=result.packed.data, shape=list(result.packed.shape), dtype=NAME_TO_DTYPE[result.packed.dtype]
        ) if result.has_dense else None,
        sparse=[pb.SparseVector(ids=i.tolist(), weights=w.tolist(), tokens=t) for (i, w), t in
                zip(result.sparse or (), result.sparse_tokens or [[]] * len(result.sparse or ()))],
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
        sparse=pb.SparseOptions(enabled=True, top_k=options.sparse_top_k, threshold=options.sparse_threshold,
                                with_dense=options.with_dense, return_tokens=options.sparse_tokens) if options.sparse else None,
    )


def embed_result(resp: pb.EmbedResponse) -> EmbedResult:
    """Decode a response; `vectors` holds the array in its wire dtype (binary: 0/1 per dimension);
    without dense output it is an empty (N, 0) array."""
    import numpy as np

    sparse = [(np.asarray(v.ids, dtype=np.int64), np.asarray(v.weights, dtype=np.float32)) for v in resp.sparse] or None
    tokens = [list(v.tokens) for v in resp.sparse] if any(v.tokens for v in resp.sparse) else None
    if not resp.HasField("embeddings"):
        n = len(resp.token_counts)
        empty = np.zeros((n, 0), dtype=np.float32)
        return EmbedResult(vectors=empty, packed=Packed(b"", (n, 0), "float32"), token_counts=list(resp.token_counts),
                           truncated=list(resp.truncated), model=resp.model, mode=resp.mode, sparse=sparse, has_dense=False,
                           sparse_tokens=tokens)
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
        sparse=sparse,
        sparse_tokens=tokens,
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
    except RecursionError:
        raise InvalidInput(f"{what} is {TOO_DEEP}") from None
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
        sparse_mode=c.sparse_mode or d.sparse_mode,
        sparse_adapter=c.sparse_adapter,
        sparse_top_k=c.sparse_top_k if c.HasField("sparse_top_k") else d.sparse_top_k,
        query_top_k=c.query_top_k if c.HasField("query_top_k") else d.query_top_k,
        query_idf=c.query_idf if c.HasField("query_idf") else d.query_idf,
        shards=c.shards or d.shards,
    )


def collection_config_pb(c: rt.CollectionConfig) -> rpb.CollectionConfig:
    return rpb.CollectionConfig(
        name=c.name, mode=c.mode, query_prompt=c.query_prompt, query_instruction=c.query_instruction,
        doc_prompt=c.doc_prompt, doc_instruction=c.doc_instruction, adapter=c.adapter,
        dimensions=c.dimensions, metric=c.metric, index=c.index, sparse=c.sparse,
        chunk_tokens=c.chunk_tokens, chunk_overlap=c.chunk_overlap, sparse_mode=c.sparse_mode,
        sparse_adapter=c.sparse_adapter, sparse_top_k=c.sparse_top_k, query_top_k=c.query_top_k,
        query_idf=c.query_idf, shards=c.shards,
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
        except RecursionError:
            raise InvalidInput(f"filter {i} on {f.field!r}: value_json is nested too deeply: give a scalar, or a list of scalars for in/nin") from None
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
        feedback_chunks=r.feedback_chunks,
        feedback_weight=r.feedback_weight if r.HasField("feedback_weight") else 1.0,
        length_norm=r.length_norm,
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
        "config": dataclasses.asdict(collection_config(s.config)) if s.HasField("config") else None,
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


# --- compression ------------------------------------------------------------------------------


def scorer_options(o: cpb.ScorerOptions) -> EmbedOptions | None:
    """Scorer options of a request; None (the compressor's default) when none is set."""
    if not (o.mode or o.prompt or o.instruction or o.adapter):
        return None
    return EmbedOptions(mode=o.mode, prompt=o.prompt, instruction=o.instruction, adapter=o.adapter)


def compress_kwargs(r: cpb.CompressRequest) -> dict[str, Any]:
    """Keyword arguments of CompressionEngine.compress (besides query and passages)."""
    sentence = scorer_options(r.sentence_options)
    query = scorer_options(r.query_options) if r.HasField("query_options") else None
    return {
        "method": r.method or "extractive",
        "budget_tokens": r.budget_tokens if r.HasField("budget_tokens") else None,
        "budget_ratio": r.budget_ratio if r.HasField("budget_ratio") else None,
        "top_n": r.top_n if r.HasField("top_n") else None,
        "order": r.order or "original",
        "selective": r.selective,
        "threshold": r.threshold if r.HasField("threshold") else None,
        "max_new_tokens": r.max_new_tokens if r.HasField("max_new_tokens") else None,
        "options": sentence,
        "query_options": query if query is not None else sentence,
        "adapter": r.adapter,
    }


def compress_response(res: ct.CompressResult) -> cpb.CompressResponse:
    f = res.faithfulness
    return cpb.CompressResponse(
        text=res.text,
        spans=[cpb.Span(passage=s.passage, start=s.start, end=s.end, score=s.score) for s in res.spans],
        tokens_before=res.tokens_before,
        tokens_after=res.tokens_after,
        empty=res.decision == ct.SKIP,
        decision=res.decision,
        score=res.score,
        threshold=res.threshold,
        reason=res.reason,
        method=res.method,
        compression_rate=res.compression_rate,
        faithfulness=cpb.Faithfulness(
            content_words=f.content_words, unsupported_words=f.unsupported_words, unsupported=f.unsupported,
            supported_ratio=f.supported_ratio,
        ) if f is not None else None,
        seconds=res.seconds,
    )


def compress_info(info: dict[str, Any], default_budget_ratio: float) -> cpb.CompressInfo:
    return cpb.CompressInfo(
        methods=info["methods"], orders=info["orders"], default_mode=info["default_options"]["mode"],
        threshold=info["threshold"], max_passages=info["max_passages"], max_input_tokens=info["max_input_tokens"],
        max_abstractive_input_tokens=info["max_abstractive_input_tokens"],
        max_summary_tokens=info["max_summary_tokens"], default_budget_ratio=default_budget_ratio,
    )


# client side


def compress_request(query: str, passages: list[str], **kw: Any) -> cpb.CompressRequest:
    def scorer(o: dict[str, str] | None) -> cpb.ScorerOptions | None:
        return cpb.ScorerOptions(**o) if o else None

    return cpb.CompressRequest(
        query=query, passages=passages, method=kw.get("method") or "", budget_tokens=kw.get("budget_tokens"),
        budget_ratio=kw.get("budget_ratio"), top_n=kw.get("top_n"), order=kw.get("order") or "",
        selective=bool(kw.get("selective")), threshold=kw.get("threshold"), max_new_tokens=kw.get("max_new_tokens"),
        sentence_options=scorer(kw.get("sentence_options")), query_options=scorer(kw.get("query_options")),
        adapter=kw.get("adapter") or "",
    )


def compress_result(r: cpb.CompressResponse) -> ct.CompressResult:
    f = r.faithfulness if r.HasField("faithfulness") else None
    return ct.CompressResult(
        method=r.method, text=r.text,
        spans=[ct.Span(s.passage, s.start, s.end, s.score) for s in r.spans],
        tokens_before=r.tokens_before, tokens_after=r.tokens_after, decision=r.decision,
        score=r.score if r.HasField("score") else None, threshold=r.threshold if r.HasField("threshold") else None,
        reason=r.reason, seconds=r.seconds,
        faithfulness=ct.Faithfulness(f.content_words, f.unsupported_words, list(f.unsupported)) if f is not None else None,
    )


# --- generation -------------------------------------------------------------------------------


def generation_params(o: gpb.DecodingOptions, default_max_new_tokens: int = 128, chat: bool = False) -> tuple[gt.GenerationParams, str]:
    """(params, datastore name) of a request's decoding options."""
    params = gt.GenerationParams(
        max_new_tokens=o.max_new_tokens if o.HasField("max_new_tokens") else default_max_new_tokens,
        temperature=o.temperature if o.HasField("temperature") else 0.0,
        top_p=o.top_p if o.HasField("top_p") else 1.0,
        seed=o.seed if o.HasField("seed") else None,
        stop=tuple(o.stop),
        speculative=o.speculative if o.HasField("speculative") else True,
        self_draft_layers=o.self_draft_layers if o.HasField("self_draft_layers") else 0,
        chat=chat,
    )
    return params, o.datastore


def generate_args(r: gpb.GenerateRequest) -> dict[str, Any]:
    """Keyword arguments of GenerationEngine.stream."""
    if r.prompt and r.prompt_token_ids:
        raise InvalidInput("give prompt or prompt_token_ids, not both")
    params, datastore = generation_params(r.options, chat=r.chat)
    return {
        "prompt": list(r.prompt_token_ids) if r.prompt_token_ids else r.prompt,
        "params": params,
        "passages": list(r.passages) or None,
        "datastore": datastore,
    }


def decode_stats_pb(s: gt.DecodeStats) -> gpb.DecodeStats:
    d = s.as_dict()
    return gpb.DecodeStats(
        prompt_tokens=s.prompt_tokens, generated_tokens=s.generated_tokens, steps=s.steps,
        draft_tokens=s.draft_tokens, accepted_draft_tokens=s.accepted_draft_tokens,
        mean_accepted_tokens=s.mean_accepted_tokens, prefill_s=s.prefill_s, decode_s=s.decode_s,
        tokens_per_s=d["tokens_per_s"],
    )


def generate_chunk_pb(c: gt.GenerationChunk) -> gpb.GenerateChunk:
    return gpb.GenerateChunk(
        text=c.text, token_ids=c.token_ids, finish_reason=c.finish_reason or "",
        stats=decode_stats_pb(c.stats) if c.finish_reason and c.stats is not None else None,
    )


def answer_request(r: gpb.AnswerRequest) -> Any:
    from lodestar.services.answer import DEFAULT_MAX_NEW_TOKENS, AnswerRequest

    params, datastore = generation_params(r.options, DEFAULT_MAX_NEW_TOKENS)
    return AnswerRequest(
        question=r.question, collection=r.collection, k=r.k if r.HasField("k") else 5, retriever=r.retriever,
        filters=search_request(rpb.SearchRequest(filters=list(r.filters))).filters,
        compression=r.compression or "extractive",
        budget_tokens=r.budget_tokens if r.HasField("budget_tokens") else None,
        selective=r.selective, params=params, datastore=datastore, fusion=r.fusion,
        alpha=r.alpha if r.HasField("alpha") else None, rrf_k=r.rrf_k if r.HasField("rrf_k") else None,
        threshold=r.threshold if r.HasField("threshold") else None, feedback_chunks=r.feedback_chunks,
        feedback_weight=r.feedback_weight if r.HasField("feedback_weight") else 1.0, length_norm=r.length_norm,
    )


def answer_chunk_pb(item: Any) -> gpb.AnswerChunk:
    """AnswerStart -> the first message (sources, context); GenerationChunk -> a text message."""
    if isinstance(item, gt.GenerationChunk):
        g = generate_chunk_pb(item)
        return gpb.AnswerChunk(text=g.text, finish_reason=g.finish_reason, stats=g.stats if g.HasField("stats") else None)
    return gpb.AnswerChunk(
        sources=[gpb.Source(id=h.id, score=h.score, chunk=h.chunk, text=h.chunk_text or h.text,
                            metadata_json=json.dumps(h.metadata, ensure_ascii=False)) for h in item.sources],
        context=item.context, decision=item.decision, context_tokens=item.context_tokens,
        passage_tokens=item.passage_tokens,
    )


def datastore_info_pb(d: Any) -> gpb.DatastoreInfo:
    return gpb.DatastoreInfo(name=d.name, tokens=d.tokens, documents=d.documents, segments=d.segments, path=d.path,
                             is_default=d.is_default)


# client side


def decoding_options(**kw: Any) -> gpb.DecodingOptions:
    """max_new_tokens, stop, temperature, top_p, seed, speculative, datastore, self_draft_layers -> DecodingOptions."""
    unknown = set(kw) - {"max_new_tokens", "stop", "temperature", "top_p", "seed", "speculative", "datastore",
                         "self_draft_layers"}
    if unknown:
        raise TypeError(f"unknown decoding option(s) {sorted(unknown)}")
    stop = kw.pop("stop", None)
    return gpb.DecodingOptions(stop=[stop] if isinstance(stop, str) else list(stop or ()), **kw)


def stats_from_pb(s: gpb.DecodeStats) -> dict[str, Any]:
    return {
        "prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens, "steps": s.steps,
        "draft_tokens": s.draft_tokens, "accepted_draft_tokens": s.accepted_draft_tokens,
        "mean_accepted_tokens": round(s.mean_accepted_tokens, 4), "prefill_s": round(s.prefill_s, 4),
        "decode_s": round(s.decode_s, 4), "tokens_per_s": round(s.tokens_per_s, 3),
    }


def datastore_dict(d: gpb.DatastoreInfo) -> dict[str, Any]:
    return {"name": d.name, "tokens": d.tokens, "documents": d.documents, "segments": d.segments, "path": d.path,
            "is_default": d.is_default}


# --- indexing jobs -----------------------------------------------------------------------------


def job_pb(info: Any, errors: Sequence[Any] = (), mode: str = "") -> ipb.Job:
    return ipb.Job(
        id=info.id, collection=info.collection, source=info.source, state=info.state, lines=info.lines,
        documents=info.documents, chunks=info.chunks, chunks_done=info.chunks_done, chunks_failed=info.chunks_failed,
        written=info.written, errors_count=info.errors,
        errors=[ipb.JobError(line=e.line, doc_id=e.doc_id, message=e.message) for e in errors],
        created_at=info.created_at, updated_at=info.updated_at, finished_at=info.finished_at or 0.0,
        message=info.message, workers=info.workers, mode=mode, processed=info.processed,
    )


def chunk_work_pb(w: Any) -> ipb.ChunkWork:
    if w.skip:
        return ipb.ChunkWork(skip=w.skip)
    return ipb.ChunkWork(
        collection=w.collection, config=collection_config_pb(w.config), dimensions=w.dim, model=w.model,
        documents=[document_pb(d) for d in w.docs], lines=w.lines,
    )


def commit(r: ipb.CommitChunkRequest) -> Any:
    """A worker's CommitChunk -> indexing.Commit, checking the flattened spans and vectors add up."""
    import numpy as np

    from lodestar.retrieve.jobs import Commit, JobError, check_line
    from lodestar.retrieve.prepare import Prepared

    docs = documents(list(r.documents))
    if len(r.span_counts) != len(docs) or len(r.lines) != len(docs):
        raise InvalidInput(f"{len(docs)} documents need as many span_counts and lines; got {len(r.span_counts)} and {len(r.lines)}")
    for i, n in enumerate(r.lines):
        check_line(n, f"lines[{i}]")
    for i, e in enumerate(r.errors):
        check_line(e.line, f"errors[{i}].line")
    chunks = sum(r.span_counts)
    if len(r.spans) != 2 * chunks:
        raise InvalidInput(f"{chunks} chunks need {2 * chunks} span offsets; got {len(r.spans)}")
    if r.dimensions == 0 or len(r.vectors) != 4 * chunks * r.dimensions:
        raise InvalidInput(f"vectors hold {len(r.vectors)} bytes; {chunks} chunks x {r.dimensions} float32 need {4 * chunks * r.dimensions}")
    flat = list(r.spans)
    spans, at = [], 0
    for n in r.span_counts:
        spans.append([(flat[2 * i], flat[2 * i + 1]) for i in range(at, at + n)])
        at += n
    vectors = np.frombuffer(r.vectors, dtype="<f4").reshape(chunks, r.dimensions).astype(np.float32)
    sparse = [(np.asarray(v.ids, dtype=np.int64), np.asarray(v.weights, dtype=np.float32)) for v in r.sparse] or None
    return Commit(
        job_id=r.job_id, idx=r.chunk, prepared=Prepared(docs, spans, vectors, sparse), lines=list(r.lines),
        errors=[JobError(e.line, e.doc_id, e.message) for e in r.errors], worker=r.worker, model=r.model,
    )


# client (worker) side


def chunk_work(resp: ipb.ChunkWork, job_id: str, idx: int) -> Any:
    from lodestar.retrieve.jobs import ChunkWork

    if resp.skip:
        return ChunkWork(job_id, idx, skip=resp.skip)
    return ChunkWork(
        job_id, idx, resp.collection, collection_config(resp.config), resp.dimensions, resp.model,
        documents(list(resp.documents)), list(resp.lines),
    )


def commit_request(c: Any) -> ipb.CommitChunkRequest:
    import numpy as np

    p = c.prepared
    return ipb.CommitChunkRequest(
        job_id=c.job_id, chunk=c.idx, worker=c.worker, model=c.model, documents=[document_pb(d) for d in p.docs],
        lines=c.lines, span_counts=[len(s) for s in p.spans], spans=[x for s in p.spans for ab in s for x in ab],
        vectors=np.ascontiguousarray(p.vectors, dtype="<f4").tobytes(), dimensions=int(p.vectors.shape[1]),
        errors=[ipb.JobError(line=e.line, doc_id=e.doc_id, message=e.message) for e in c.errors],
        sparse=[pb.SparseVector(ids=t.tolist(), weights=w.tolist()) for t, w in p.sparse or ()],
    )


def job_dict(j: ipb.Job) -> dict[str, Any]:
    return {
        "id": j.id, "collection": j.collection, "source": j.source, "state": j.state, "lines": j.lines,
        "documents": j.documents, "chunks": j.chunks, "chunks_done": j.chunks_done, "chunks_failed": j.chunks_failed,
        "written": j.written, "errors_count": j.errors_count,
        "errors": [{"line": e.line, "doc_id": e.doc_id, "message": e.message} for e in j.errors],
        "created_at": j.created_at, "updated_at": j.updated_at, "finished_at": j.finished_at or None,
        "message": j.message, "workers": dict(j.workers), "mode": j.mode, "processed": j.processed,
    }
