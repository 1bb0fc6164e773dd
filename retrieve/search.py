"""Search in a collection: the request validated once, queries embedded with no lock held, then
under the collection's read lock dense (FAISS) and/or sparse (BM25 or learned, with optional
pseudo-relevance feedback) chunk rankings aggregated to documents by their best chunk, fused for
hybrid, and returned as hits with the stored text and metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lodestar.cancel import checkpoint
from lodestar.embedding import Embedder
from lodestar.errors import InvalidInput
from lodestar.retrieve.calibrate import fuse_hybrid, resolve
from lodestar.retrieve.catalog import Catalog
from lodestar.retrieve.collection import Collection
from lodestar.retrieve.faiss_runtime import search_threads
from lodestar.retrieve.feedback import MAX_FEEDBACK_CHUNKS, feedback_query
from lodestar.retrieve.filters import MAX_FILTERS, CompiledFilter, compile_filters
from lodestar.retrieve.impact import ImpactIndex
from lodestar.retrieve.prepare import embed_sparse, embed_texts
from lodestar.retrieve.store import ChunkRef
from lodestar.retrieve.types import FUSIONS, RETRIEVERS, CollectionConfig, Hit, SearchRequest

MAX_QUERIES = 1024  # queries in one search request (the server's max_queries_per_search)
QUERY_BLOCK = 128  # queries ranked between two cancellation checks
CANDIDATE_FACTOR = 4  # chunk candidates fetched per wanted document (chunks aggregate to documents)
HYBRID_DEPTH = 100  # each retriever's document ranking depth before fusion: max(k, this)


@dataclass
class Ranked:
    """One document in one query's ranking."""

    doc_id: str
    score: float
    ref: ChunkRef
    dense: float | None = None
    sparse: float | None = None


class Searcher:
    """Searches the catalog's collections; `faiss_threads` per dense search (0 = one for a few
    queries, FAISS's default for a batch)."""

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        max_k: int,
        faiss_threads: int = 0,
        max_queries: int = MAX_QUERIES,
        max_filters: int = MAX_FILTERS,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.max_k = max_k
        self.faiss_threads = faiss_threads
        self.max_queries = max_queries
        self.max_filters = max_filters

    def search(self, name: str, request: SearchRequest) -> list[list[Hit]]:
        """One list of document hits per query, best first. A cancelled call (lodestar.cancel) stops
        between stages and between blocks of QUERY_BLOCK queries."""
        c = self.catalog.get(name)
        c.check_serving()
        where = self._validate(c, request)
        queries = list(request.queries)
        qvecs = self._embed(c, queries, query=True) if request.retriever != "sparse" else None  # (Q, D)
        k = request.k
        checkpoint()
        with c.lock.read():
            c.check_serving()
            assert c.store is not None and c.dense is not None
            allowed = c.store.allowed_chunk_ids(where) if where is not None else None  # (A,) or None
            if allowed is not None and not len(allowed):
                return [[] for _ in queries]
            depth = max(k, HYBRID_DEPTH) if request.retriever == "hybrid" else k
            dense = sparse = None
            if request.retriever in ("dense", "hybrid"):
                assert qvecs is not None
                dense = self._rank(c, self._dense_fn(c, qvecs, allowed), len(queries), depth, c.dense.count, allowed)
            if request.retriever in ("sparse", "hybrid"):
                assert c.sparse is not None
                sparse = self._rank(
                    c, self._sparse_fn(c, queries, allowed, request), len(queries), depth, c.sparse.count, allowed
                )
            if request.retriever == "dense":
                assert dense is not None
                ranked = [[Ranked(r.doc_id, r.score, r.ref, dense=r.score) for r in row[:k]] for row in dense]
            elif request.retriever == "sparse":
                assert sparse is not None
                ranked = [[Ranked(r.doc_id, r.score, r.ref, sparse=r.score) for r in row[:k]] for row in sparse]
            else:
                assert dense is not None and sparse is not None
                fusion = resolve(request, c.calibration)  # auto: the collection's calibrated choice
                ranked = [fuse_hybrid(d, s, *fusion, request.rrf_k)[:k] for d, s in zip(dense, sparse)]
            return self._hits(c, ranked, request.include_text)

    def _dense_fn(
        self, c: Collection, qvecs: np.ndarray, allowed: np.ndarray | None
    ) -> Callable[[int], list[list[tuple[int, float]]]]:
        """n -> per query the n best (chunk id, score) of the dense index (qvecs: (Q, D))."""

        def run(n: int) -> list[list[tuple[int, float]]]:
            assert c.dense is not None
            out: list[list[tuple[int, float]]] = []
            for lo in range(0, len(qvecs), QUERY_BLOCK):
                checkpoint()
                block = qvecs[lo : lo + QUERY_BLOCK]  # (b, D)
                with search_threads(len(block), self.faiss_threads):
                    scores, ids = c.dense.search(block, n, allowed)  # (b, n), (b, n) with -1 padding
                out += [[(int(i), float(s)) for s, i in zip(sr, ir) if i >= 0] for sr, ir in zip(scores, ids)]
            return out

        return run

    def _sparse_fn(
        self, c: Collection, queries: list[str], allowed: np.ndarray | None, request: SearchRequest
    ) -> Callable[[int], list[list[tuple[int, float]]]]:
        """Call with the collection's read lock held. Learned sparse: encoded once (the ranking may ask
        for more candidates), and with feedback_chunks each query gets the first ranking's top chunks added
        (`feedback_query`) before the ranking that counts."""
        encoded: list[Any] = list(queries)
        options: dict[str, Any] = {}
        if isinstance(c.sparse, ImpactIndex):
            assert c.config is not None and c.store is not None
            encoded = embed_sparse(self.embedder, c.config, queries, query=True)
            options |= {"idf": c.config.query_idf, "length_norm": request.length_norm}
            if request.feedback_chunks:
                checkpoint()
                first = c.sparse.search(encoded, request.feedback_chunks, allowed, **options)
                vectors = iter(
                    c.store.chunk_sparse(np.array([i for row in first for i, _ in row], dtype=np.int64), reader=True)
                )
                encoded = [
                    feedback_query(q, [next(vectors) for _ in row], request.feedback_weight)  # one read for the batch
                    for q, row in zip(encoded, first)
                ]

        def run(n: int) -> list[list[tuple[int, float]]]:
            assert c.sparse is not None
            out: list[list[tuple[int, float]]] = []
            for lo in range(0, len(encoded), QUERY_BLOCK):
                checkpoint()
                rows = c.sparse.search(encoded[lo : lo + QUERY_BLOCK], n, allowed, **options)
                out += [[(int(i), float(s)) for i, s in row] for row in rows]
            return out

        return run

    def _rank(
        self,
        c: Collection,
        run: Callable[[int], list[list[tuple[int, float]]]],
        nq: int,
        depth: int,
        count: int,
        allowed: np.ndarray | None,
    ) -> list[list[Ranked]]:
        """Per query, the top `depth` documents by their best chunk: fetch chunk candidates, and
        fetch more while a query has fewer than `depth` documents and more chunks remain."""
        assert c.store is not None
        available = min(count, len(allowed)) if allowed is not None else count
        if available <= 0:
            return [[] for _ in range(nq)]
        n = min(available, depth * CANDIDATE_FACTOR)
        while True:
            checkpoint()
            chunk_rows = run(n)
            refs = c.store.chunk_refs(sorted({i for row in chunk_rows for i, _ in row}))
            out: list[list[Ranked]] = []
            for row in chunk_rows:
                docs: dict[str, Ranked] = {}
                for chunk_id, score in row:  # best first, so a document's first chunk is its best
                    ref = refs.get(chunk_id)
                    if ref is not None and ref.doc_id not in docs:
                        docs[ref.doc_id] = Ranked(ref.doc_id, score, ref)
                out.append(list(docs.values()))
            short = any(len(docs) < depth and len(row) >= n for docs, row in zip(out, chunk_rows))
            if not short or n >= available:
                return [row[:depth] for row in out]
            n = min(available, n * CANDIDATE_FACTOR)

    def _hits(self, c: Collection, ranked: list[list[Ranked]], include_text: bool) -> list[list[Hit]]:
        """Hits with each document's stored text and metadata (a document deleted meanwhile is left out)."""
        assert c.store is not None
        rows = c.store.doc_rows(sorted({r.doc_id for row in ranked for r in row}))
        return [
            [hit(r, r.ref.idx, r.ref.start, r.ref.end, *rows[r.doc_id], include_text) for r in row if r.doc_id in rows]
            for row in ranked
        ]

    def _embed(self, c: Collection, texts: list[str], query: bool) -> np.ndarray:
        """(N, D) float32 vectors of `texts` with the collection's doc or query options."""
        assert c.config is not None
        return embed_texts(self.embedder, c.config, texts, c.dim, query)

    def _validate(self, c: Collection, request: SearchRequest) -> CompiledFilter | None:
        """Check every field of the request against the collection; -> its compiled filter (None = none)."""
        assert c.config is not None
        validate_search(c.name, c.config, request, self.max_k, self.max_queries)
        return compile_filters(list(request.filters or ()), self.max_filters)


class Fused(Protocol):
    """A document in a (fused) ranking, any backend's: search.Ranked, the Milvus backend's Scored."""

    @property
    def doc_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def dense(self) -> float | None: ...
    @property
    def sparse(self) -> float | None: ...


def hit(r: Fused, chunk: int, start: int, end: int, text: str, metadata: dict[str, Any], include_text: bool) -> Hit:
    """The hit for ranked document `r` (any backend's: doc_id, score, dense, sparse) whose best chunk is
    text[start:end]; text only when asked for."""
    return Hit(
        id=r.doc_id,
        score=r.score,
        text=text if include_text else "",
        metadata=metadata,
        chunk=chunk,
        chunk_text=text[start:end] if include_text else "",
        dense_score=r.dense,
        sparse_score=r.sparse,
    )


def validate_search(
    name: str, config: CollectionConfig, request: SearchRequest, max_k: int, max_queries: int = MAX_QUERIES
) -> None:
    """Check every field of a search request against collection `name` (any backend); filters are
    checked where they are compiled."""
    queries = request.queries
    if not isinstance(queries, (list, tuple)) or not queries:
        raise InvalidInput(f"queries is empty: send 1 to {max_queries} queries")
    if len(queries) > max_queries:
        raise InvalidInput(
            f"{len(queries)} queries in one search; the limit is max_queries_per_search={max_queries}: split the request"
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise InvalidInput(f"query {i} is empty")
    if not isinstance(request.k, int) or isinstance(request.k, bool) or not 1 <= request.k <= max_k:
        raise InvalidInput(f"k={request.k} is out of range: use 1..{max_k}")
    if request.retriever not in RETRIEVERS:
        raise InvalidInput(f"unknown retriever {request.retriever!r}: valid retrievers are {', '.join(RETRIEVERS)}")
    if request.fusion not in FUSIONS:
        raise InvalidInput(f"unknown fusion {request.fusion!r}: valid fusions are {', '.join(FUSIONS)}")
    alpha = request.alpha
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha={alpha} is out of range: use 0..1 (1 = dense only, 0 = sparse only)")
    if not isinstance(request.rrf_k, int) or request.rrf_k < 0:
        raise InvalidInput(f"rrf_k={request.rrf_k} must be a non-negative integer (60 is the usual value)")
    fb, fw = request.feedback_chunks, request.feedback_weight
    if not isinstance(fb, int) or isinstance(fb, bool) or not 0 <= fb <= MAX_FEEDBACK_CHUNKS:
        raise InvalidInput(
            f"feedback_chunks={fb} is out of range: use 0..{MAX_FEEDBACK_CHUNKS} (0 = no feedback; 3 is a good start)"
        )
    if not isinstance(fw, (int, float)) or not math.isfinite(fw) or not 0.0 < fw <= 10.0:
        raise InvalidInput(f"feedback_weight={fw} is out of range: use a number in (0, 10] (1 is the usual value)")
    b = request.length_norm
    if not isinstance(b, (int, float)) or not math.isfinite(b) or not 0.0 <= b <= 1.0:
        raise InvalidInput(f"length_norm={b} is out of range: use 0..1 (0 = off; 0.5 is a good start)")
    for option, value in (("feedback_chunks", fb), ("length_norm", b)):
        if value and (request.retriever == "dense" or config.sparse != "learned"):
            raise InvalidInput(
                f"{option} needs a learned sparse side searched (retriever sparse or hybrid); collection {name!r} has "
                f"sparse={config.sparse!r} and the request retriever={request.retriever!r}"
            )
    if request.retriever in ("dense", "hybrid") and config.dense == "none":
        raise InvalidInput(
            f"retriever {request.retriever!r} needs a dense index, but collection {name!r} was created with dense='none'; "
            f"use retriever='sparse' or create a collection with dense='model'"
        )
    if request.retriever in ("sparse", "hybrid") and config.sparse == "none":
        raise InvalidInput(
            f"retriever {request.retriever!r} needs a sparse index, but collection {name!r} was created with sparse='none'; "
            f"use retriever='dense' or create a collection with sparse='bm25'"
        )
