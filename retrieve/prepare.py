"""Turning documents into what a collection stores: validated metadata, chunk spans, chunk vectors.

Kept apart from the engine because batch-indexing workers run it in their own processes (the
embedding is the expensive part) and send the server only spans and vectors; the server checks
them against the collection and writes. Engine and workers share these functions, so a document
indexed by a worker is chunked and embedded exactly as one upserted directly.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from lodestar.cancel import checkpoint
from lodestar.embedding import Embedder, EmbedOptions
from lodestar.errors import InvalidInput, Unavailable
from lodestar.retrieve.chunking import chunk_spans
from lodestar.retrieve.types import CollectionConfig, Document

EMBED_BATCH = 256  # texts per embed call when the embedder does not say its own limit


@dataclass(frozen=True)
class DocLimits:
    max_id_bytes: int = 512
    max_text_chars: int = 1_000_000


SparseVec = tuple[np.ndarray, np.ndarray]  # (term ids, weights)

# Nesting of a document's metadata (objects and lists): Python's json and SQLite's json functions
# recurse, and a document stored near their limits could fail to read back later.
MAX_METADATA_DEPTH = 64
TOO_DEEP = f"nested too deeply: the limit is {MAX_METADATA_DEPTH} levels of objects and lists"


def json_depth(value: Any, limit: int = MAX_METADATA_DEPTH) -> int:
    """Nesting depth of a parsed JSON value ({} and {"a": 1} are 1, a scalar 0), counted level by
    level without recursion; stops once past `limit`."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [x for x in level if isinstance(x, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [v for x in containers for v in (x.values() if isinstance(x, dict) else x)]
    return depth


@dataclass
class Prepared:
    """Documents ready to be written: per document its chunk spans; (C, D) vectors, chunks in order;
    for learned-sparse collections also each chunk's sparse vector."""

    docs: list[Document]
    spans: list[list[tuple[int, int]]]
    vectors: np.ndarray
    sparse: list[SparseVec] | None = None

    @property
    def chunk_texts(self) -> list[str]:
        return [d.text[s:e] for d, sp in zip(self.docs, self.spans) for s, e in sp]


# Bidirectional controls: an id holding one displays as a different id in logs and tools.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_id(doc_id: str, where: str) -> None:
    """Refuse an id holding a control character (NUL, newline, ...) or a bidirectional control."""
    for j, ch in enumerate(doc_id):
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            raise InvalidInput(
                f"{where}: id holds the control character U+{ord(ch):04X} at position {j}: "
                "ids may not hold control or bidirectional-control characters"
            )


def validate_document(doc: Document, limits: DocLimits, where: str) -> str:
    """Check one document; -> its metadata as compact JSON. Raises InvalidInput saying what is wrong."""
    doc_id = getattr(doc, "id", None)
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidInput(f"{where}: id is empty: give every document a non-empty string id")
    where = f"{where} (id {doc_id[:80]!r})"
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: id is not valid Unicode (lone surrogate)") from None
    if size > limits.max_id_bytes:
        raise InvalidInput(f"{where}: id is {size} UTF-8 bytes; the limit is max_id_bytes={limits.max_id_bytes}")
    check_id(doc_id, where)
    text = getattr(doc, "text", None)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: text is empty")
    if len(text) > limits.max_text_chars:
        raise InvalidInput(
            f"{where}: text is {len(text)} characters; the limit is max_text_chars={limits.max_text_chars}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: text is not valid Unicode (lone surrogate)") from None
    if "\x00" in text:
        raise InvalidInput(f"{where}: text contains a NUL character")
    metadata = getattr(doc, "metadata", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}: metadata must be an object (dict), got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"{where}: metadata key {key!r} is not a string")
    if json_depth(metadata) > MAX_METADATA_DEPTH:
        raise InvalidInput(f"{where}: metadata is {TOO_DEEP}")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        encoded.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise InvalidInput(
            f"{where}: metadata is not JSON-serialisable ({e}); use strings, finite numbers, booleans, null, lists and objects"
        ) from None
    if len(encoded) > limits.max_text_chars:
        raise InvalidInput(
            f"{where}: metadata is {len(encoded)} characters as JSON; the limit is max_text_chars={limits.max_text_chars}"
        )
    return encoded


def embed_options(cfg: CollectionConfig, query: bool) -> EmbedOptions:
    """How a collection embeds its documents (query=False) or its queries."""
    return EmbedOptions(
        mode=cfg.mode,
        prompt=cfg.query_prompt if query else cfg.doc_prompt,
        instruction=cfg.query_instruction if query else cfg.doc_instruction,
        adapter=cfg.adapter,
        dimensions=cfg.dimensions,
        normalize=cfg.metric == "cosine",
    )


def sparse_options(cfg: CollectionConfig, query: bool) -> EmbedOptions:
    """How a learned-sparse collection encodes its chunks or its queries (SPLADE weights only)."""
    return EmbedOptions(
        mode=cfg.sparse_mode,
        adapter=cfg.sparse_adapter,
        sparse=True,
        with_dense=False,
        sparse_top_k=cfg.query_top_k if query else cfg.sparse_top_k,
    )


def embed_sparse(embedder: Embedder, cfg: CollectionConfig, texts: list[str], query: bool) -> list[SparseVec]:
    """Learned-sparse vectors of `texts` (chunks, or queries with query=True)."""
    options = sparse_options(cfg, query)
    step = embed_limit(embedder)
    out: list[SparseVec] = []
    for i in range(0, len(texts), step):
        checkpoint()
        res = embedder.embed(texts[i : i + step], options)
        if res.sparse is None or len(res.sparse) != len(texts[i : i + step]):
            raise Unavailable("the embedder returned no sparse vectors for a learned-sparse collection")
        out += [(np.asarray(t, dtype=np.int64), np.asarray(w, dtype=np.float32)) for t, w in res.sparse]
    return out


def embed_limit(embedder: Embedder) -> int:
    """Texts per embed call: the embedder's own request limit, or EMBED_BATCH."""
    cfg = getattr(embedder, "config", None)
    limit = getattr(cfg, "max_texts_per_request", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else EMBED_BATCH


def chunk_document(embedder: Embedder, cfg: CollectionConfig, text: str) -> list[tuple[int, int]]:
    """Character spans of a document's chunks (by tokens); whitespace-only chunks are skipped."""
    if cfg.chunk_tokens == 0:
        return [(0, len(text))]
    spans = chunk_spans(embedder.token_offsets(text), cfg.chunk_tokens, cfg.chunk_overlap)
    out = [(0, len(text)) if (s, e) == (0, 0) else (int(s), int(e)) for s, e in spans]
    out = [(s, e) for s, e in out if text[s:e].strip()]
    return out or [(0, len(text))]


def embed_texts(embedder: Embedder, cfg: CollectionConfig, texts: list[str], dim: int, query: bool) -> np.ndarray:
    """(N, dim) float32 vectors of `texts` with the collection's doc or query options; refuses a
    wrong width or a non-finite vector (it would poison every later rebuild)."""
    options = embed_options(cfg, query)
    step = embed_limit(embedder)
    out = np.empty((len(texts), dim), dtype=np.float32)  # (N, D)
    for i in range(0, len(texts), step):
        checkpoint()
        vectors = np.asarray(embedder.embed(texts[i : i + step], options).vectors, dtype=np.float32)
        if vectors.shape != (len(texts[i : i + step]), dim):
            raise Unavailable(
                f"collection {cfg.name!r} holds {dim}-dim vectors but the embedder returned shape {vectors.shape}"
            )
        out[i : i + step] = vectors
    check_finite(out, texts, "query" if query else "chunk")
    return out


def check_finite(vectors: np.ndarray, texts: list[str], what: str) -> None:
    bad = ~np.isfinite(vectors).all(axis=1)  # (N,)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise InvalidInput(f"the embedding of {what} {j} ({texts[j][:60]!r}) is not finite; nothing was written")


def prepare(embedder: Embedder, cfg: CollectionConfig, dim: int, docs: list[Document]) -> Prepared:
    """Chunk and embed documents (already validated) for a collection with `cfg` and width `dim`; a
    cancelled call (lodestar.cancel) stops between documents and between embedding steps."""
    spans = []
    for i, d in enumerate(docs):
        if i % 64 == 0:
            checkpoint()
        spans.append(chunk_document(embedder, cfg, d.text))
    prepared = Prepared(docs, spans, np.empty((0, dim), dtype=np.float32))
    texts = prepared.chunk_texts
    if dim:  # dense='none' (width 0): no model forward, (C, 0) vectors
        prepared.vectors = embed_texts(embedder, cfg, texts, dim, query=False)
    else:
        prepared.vectors = np.empty((len(texts), 0), dtype=np.float32)
    if cfg.sparse == "learned":
        prepared.sparse = embed_sparse(embedder, cfg, texts, query=False)
    return prepared
