"""Domain types of the retrieval engine (no torch, no gRPC: the client uses them too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPARSE_KINDS = (
    "none",
    "bm25",
    "learned",
)  # learned: SPLADE weights from the LM head (an adapter of `lodestar train sparse`)
DENSE_KINDS = ("model", "none")  # model: the embedding model's vectors in FAISS; none: no dense side (no model forward)
METRICS = ("cosine", "ip", "l2")
RETRIEVERS = ("dense", "sparse", "hybrid")
FUSIONS = ("rrf", "weighted", "auto", "dbsf")  # auto: the collection's calibrated choice (retrieve/calibrate.py)


@dataclass(frozen=True)
class CollectionConfig:
    """Fixed at creation; stored with the collection."""

    name: str
    mode: str = "mean"  # embedding mode (lodestar.embed.modes)
    query_prompt: str = ""  # prompt template for queries ("" = the mode's default)
    query_instruction: str = ""
    doc_prompt: str = ""
    doc_instruction: str = ""
    adapter: str = ""
    dimensions: int = 0  # 0 = the model's full width
    metric: str = "cosine"
    index: str = "Flat"  # any FAISS factory string: Flat, HNSW32, IVF{n},Flat, IVF{n},PQ{m}
    sparse: str = "bm25"  # none | bm25 | learned
    chunk_tokens: int = 256  # 0 = no chunking
    chunk_overlap: int = 32
    sparse_mode: str = "echo"  # learned: the embedding mode whose pooled span the SPLADE weights max-pool
    sparse_adapter: str = ""  # learned: LoRA adapter of the sparse encoder ("" = the base model's LM head)
    sparse_top_k: int = 256  # learned: weights kept per chunk
    query_top_k: int = 64  # learned: weights kept per query
    query_idf: bool = (
        True  # learned: scale query weights by each term's IDF over the collection (collections made before it: False)
    )
    shards: int = 1  # dense index shards, each chunk in shard id % shards, searched in parallel (1 = one index)
    backend: str = "faiss"  # faiss (embedded) | milvus (the server's LODESTAR_MILVUS_URI); see retrieve/backends
    dense: str = "model"  # model | none (a sparse-only collection: nothing is embedded at upsert or search)


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Filter:
    """One condition on a metadata field; a search's filters are AND-ed.

    op: eq | ne | in | nin | gt | gte | lt | lte  (value: a JSON scalar, or a list for in/nin)
    """

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class SearchRequest:
    queries: list[str]
    k: int = 10
    retriever: str = "dense"  # dense | sparse | hybrid
    fusion: str = "auto"  # auto (the collection's calibrated fusion) | rrf | weighted | dbsf
    alpha: float = 0.5  # weighted fusion: alpha * dense + (1 - alpha) * sparse (min-max normalised)
    rrf_k: int = 60
    filters: tuple[Filter, ...] = ()
    include_text: bool = True
    feedback_chunks: int = 0  # learned sparse: pseudo-relevance feedback from the first ranking's top chunks (0 = off)
    feedback_weight: float = 1.0  # how much of those chunks' mean vector is added to the query
    length_norm: float = 0.0  # learned sparse: BM25's b for chunk length (0 = off)


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    chunk: int  # which chunk of the document matched best
    chunk_text: str
    dense_score: float | None = None
    sparse_score: float | None = None


@dataclass
class CollectionStats:
    name: str
    documents: int
    chunks: int
    index: str
    trained: bool  # IVF/PQ: false until enough vectors exist to train
    index_vectors: int
    bytes: int  # on disk: SQLite + snapshot files
    dimensions: int
    sparse: str
    status: str  # "ok", or why the collection is not serving (corrupt snapshot, ...)
    note: str = ""  # e.g. "IVF1024 trains at 39936 vectors; 1000 so far (searching exactly until then)"
    dense: str = "model"  # model | none
    calibration: dict[str, Any] | None = None  # hybrid fusion=auto: what calibration chose and its evidence
