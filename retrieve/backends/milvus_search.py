"""Search on the Milvus backend, the same steps as search.py over Milvus's results: the request
validated by the same function, queries embedded here, Milvus ranks chunks (dense index, its BM25
function, or inner product over learned-sparse weights) under the translated filter, chunks aggregate
to documents by their best chunk (asking Milvus for more while a query is short), and hybrid fuses the
two document rankings with Lodestar's own fusion (fusion.py), so RRF and weighted mean what they
mean on FAISS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lodestar.embedding import Embedder
from lodestar.errors import FailedPrecondition
from lodestar.retrieve.backends.milvus_filters import id_list, milvus_expression
from lodestar.retrieve.backends.milvus_schema import bm25_text, dense_index
from lodestar.retrieve.backends.milvus_store import MAX_TOPK, QUERY_LIMIT, Milvus, Record
from lodestar.retrieve.calibrate import fuse_hybrid, resolve
from lodestar.retrieve.filters import MAX_FILTERS
from lodestar.retrieve.prepare import embed_sparse, embed_texts
from lodestar.retrieve.search import CANDIDATE_FACTOR, HYBRID_DEPTH, MAX_QUERIES, hit, validate_search
from lodestar.retrieve.types import Document, Hit, SearchRequest

CHUNK_FIELDS = ["doc_id", "chunk", "start", "end"]


@dataclass
class Scored:
    """One document in one query's ranking, by its best chunk."""

    doc_id: str
    score: float
    chunk: int
    start: int
    end: int
    dense: float | None = None
    sparse: float | None = None


Run = Callable[[int], list[list[dict[str, Any]]]]  # n -> per query up to n chunk results, best first


class MilvusSearch:
    def __init__(
        self,
        milvus: Milvus,
        embedder: Embedder,
        max_k: int,
        max_queries: int = MAX_QUERIES,
        max_filters: int = MAX_FILTERS,
    ) -> None:
        self.milvus = milvus
        self.embedder = embedder
        self.max_k = max_k
        self.max_queries = max_queries  # the server's max_queries_per_search / max_filters_per_search
        self.max_filters = max_filters

    def search(self, record: Record, request: SearchRequest) -> list[list[Hit]]:
        config = record.config
        validate_search(config.name, config, request, self.max_k, self.max_queries)
        for option in ("feedback_chunks", "length_norm"):
            if getattr(request, option):
                raise FailedPrecondition(
                    f"{option} is not available on backend milvus (collection {config.name!r}): it needs per-chunk "
                    f"statistics Milvus does not keep; search without it, or use a collection on backend faiss"
                )
        expr = milvus_expression(list(request.filters or ()), self.max_filters)
        queries = list(request.queries)
        k = request.k
        depth = max(k, HYBRID_DEPTH) if request.retriever == "hybrid" else k
        dense = sparse = None
        if request.retriever in ("dense", "hybrid"):
            vectors = embed_texts(self.embedder, config, queries, record.dim, query=True)  # (Q, D)
            dense = self._rank(self._dense(record, vectors.tolist(), expr), len(queries), depth)
        if request.retriever in ("sparse", "hybrid"):
            sparse = self._rank(self._sparse(record, queries, expr), len(queries), depth)
        if dense is not None and sparse is not None:
            ranked = [fuse_rankings(d, s, request)[:k] for d, s in zip(dense, sparse)]
        elif dense is not None:
            ranked = [[_as(r, dense=r.score) for r in row[:k]] for row in dense]
        else:
            assert sparse is not None
            ranked = [[_as(r, sparse=r.score) for r in row[:k]] for row in sparse]
        return self._hits(record, ranked, request.include_text)

    def _dense(self, record: Record, vectors: list[list[float]], expr: str) -> Run:
        index = dense_index(record.config.index)
        metric = record.config.metric

        def run(n: int) -> list[list[dict[str, Any]]]:
            rows = self._call(record, vectors, "vector", index.search_params(metric, n), n, expr)
            for row in rows:
                for r in row:  # higher = better, as dense.py: l2 is the negative distance
                    d = float(r["distance"])
                    r["score"] = -math.sqrt(max(d, 0.0)) if metric == "l2" else d
            return rows

        return run

    def _sparse(self, record: Record, queries: list[str], expr: str) -> Run:
        config = record.config
        if config.sparse == "learned":
            encoded = embed_sparse(self.embedder, config, queries, query=True)
            data: list[Any] = [{int(t): float(w) for t, w in zip(*vec) if float(w) != 0.0} for vec in encoded]
            field, params = "learned", {"metric_type": "IP"}
        else:
            data, field, params = [bm25_text(q) for q in queries], "bm25", {"metric_type": "BM25"}

        def run(n: int) -> list[list[dict[str, Any]]]:
            rows = self._call(record, data, field, params, n, expr)
            for row in rows:
                for r in row:  # BM25: Milvus Lite reports -score as the distance, Milvus the score
                    r["score"] = abs(float(r["distance"])) if field == "bm25" else float(r["distance"])
            return [[r for r in row if r["score"] > 0.0] for row in rows]  # no shared term: not a match

        return run

    def _call(self, record: Record, data: list[Any], field: str, params: dict[str, Any], n: int, expr: str) -> Any:
        keep = [i for i, q in enumerate(data) if q or field == "vector"]
        if len(keep) < len(data):  # a sparse query with no term or weight left matches nothing
            rows = self._call(record, [data[i] for i in keep], field, params, n, expr) if keep else []
            by_query = dict(zip(keep, rows))
            return [by_query.get(i, []) for i in range(len(data))]
        result = self.milvus.call(
            f"searching collection {record.config.name!r}",
            "search",
            record.physical,
            data=data,
            anns_field=field,
            limit=n,
            filter=expr,
            output_fields=CHUNK_FIELDS,
            search_params=params,
        )
        return [[{**hit["entity"], "distance": hit["distance"]} for hit in row] for row in result]

    def _rank(self, run: Run, nq: int, depth: int) -> list[list[Scored]]:
        """Per query, the top `depth` documents by their best chunk: fetch chunk candidates, and
        fetch more while a query has fewer than `depth` documents and Milvus returned all it was asked."""
        n = min(MAX_TOPK, depth * CANDIDATE_FACTOR)
        while True:
            chunk_rows = run(n)
            out: list[list[Scored]] = []
            for row in chunk_rows:
                docs: dict[str, Scored] = {}
                for r in row:  # best first, so a document's first chunk is its best
                    if r["doc_id"] not in docs:
                        docs[r["doc_id"]] = Scored(
                            r["doc_id"], r["score"], int(r["chunk"]), int(r["start"]), int(r["end"])
                        )
                out.append(list(docs.values()))
            short = any(len(docs) < depth and len(row) >= n for docs, row in zip(out, chunk_rows))
            if not short or n >= MAX_TOPK:
                return [row[:depth] for row in out] + [[] for _ in range(nq - len(out))]
            n = min(MAX_TOPK, n * CANDIDATE_FACTOR)

    def _hits(self, record: Record, ranked: list[list[Scored]], include_text: bool) -> list[list[Hit]]:
        """Hits with each document's text and metadata (a document deleted meanwhile is left out)."""
        docs = read_documents(self.milvus, record, sorted({r.doc_id for row in ranked for r in row}))
        return [
            [
                hit(r, r.chunk, r.start, r.end, docs[r.doc_id].text, docs[r.doc_id].metadata, include_text)
                for r in row
                if r.doc_id in docs
            ]
            for row in ranked
        ]


def read_documents(milvus: Milvus, record: Record, ids: list[str], fields: tuple[str, ...] = ()) -> dict[str, Document]:
    """id -> document for the `ids` that exist, read from their chunk-0 rows (QUERY_LIMIT ids a query)."""
    found: dict[str, Document] = {}
    unique = sorted(set(ids))
    output = list(fields) or ["doc_id", "doc_text", "doc_meta"]
    for i in range(0, len(unique), QUERY_LIMIT):
        part = unique[i : i + QUERY_LIMIT]
        rows = milvus.call(
            f"reading documents of {record.config.name!r}",
            "query",
            record.physical,
            filter=f"chunk == 0 and doc_id in {id_list(part)}",
            output_fields=output,
            limit=len(part),
        )
        for r in rows:
            meta = r.get("doc_meta")
            found[r["doc_id"]] = Document(r["doc_id"], r.get("doc_text", ""), json.loads(meta) if meta else {})
    return found


def _as(r: Scored, dense: float | None = None, sparse: float | None = None) -> Scored:
    return Scored(r.doc_id, r.score, r.chunk, r.start, r.end, dense=dense, sparse=sparse)


def fuse_rankings(dense: list[Scored], sparse: list[Scored], request: SearchRequest) -> list[Scored]:
    """Hybrid: Lodestar's fusion of the two document rankings (calibrate.fuse_hybrid). auto: Milvus
    collections are not calibrated (the pseudo-queries re-index chunks, which only the embedded backend
    does), so auto runs calibrate.FALLBACK, as an embedded collection too small to calibrate."""
    return fuse_hybrid(dense, sparse, *resolve(request, None), request.rrf_k)
