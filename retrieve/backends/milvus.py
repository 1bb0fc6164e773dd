"""The Milvus backend: every collection's chunks, vectors, sparse weights and documents live in Milvus
(schema: milvus_schema.py), its config too (milvus_store.py), so this process keeps no state a
replica beside it lacks: any number of `lodestar serve` replicas pointed at one Milvus serve the same
collections.

Durability is Milvus's: a write is acknowledged once Milvus acknowledged it, and collections are
created with Strong consistency, so a search on any replica sees every acknowledged write. An upsert
deletes the documents' old chunks, then inserts the new ones (Milvus has no transaction over both; a
search between the two misses those documents). Snapshot, Restore and Rebuild belong to Milvus's own
backup tool and are refused with FAILED_PRECONDITION saying so; so are the learned-sparse extras
that need collection-wide statistics (`query_idf`, `length_norm`).
"""

from __future__ import annotations

import builtins
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lodestar.embedding import Embedder
from lodestar.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from lodestar.retrieve.backends.milvus_filters import id_list, typed_metadata
from lodestar.retrieve.backends.milvus_schema import (
    MAX_ID_CHARS,
    bm25_text,
    chunk_indexes,
    chunk_schema,
    dense_index,
)
from lodestar.retrieve.backends.milvus_search import MilvusSearch, read_documents
from lodestar.retrieve.backends.milvus_store import (
    MAX_VARCHAR,
    QUERY_LIMIT,
    ConfigStore,
    Milvus,
    MilvusOptions,
    Record,
)
from lodestar.retrieve.catalog import Catalog
from lodestar.retrieve.filters import MAX_FILTERS
from lodestar.retrieve.prepare import Prepared, prepare
from lodestar.retrieve.search import MAX_QUERIES
from lodestar.retrieve.types import CollectionConfig, CollectionStats, Document, Hit, SearchRequest
from lodestar.retrieve.writes import Writer, check_prepared

BACKUP_HINT = (
    "use Milvus's own backup tool (milvus-backup: create / restore a backup of the collection's Milvus "
    "collection, named in `lodestar collection stats`), or re-index from the source documents"
)
INSERT_BATCH = 512  # rows per insert call


def sparse_row(terms: Any, weights: Any) -> dict[int, float]:
    """A learned-sparse vector as Milvus's {term: weight}, zero weights left out."""
    return {int(t): float(w) for t, w in zip(terms, weights) if float(w) != 0.0}


class MilvusBackend:
    """Collections in Milvus. `catalog` and `writer` (the embedded backend's) validate configs and
    documents exactly as for FAISS collections; `model_id` names the embedding model."""

    def __init__(
        self,
        options: MilvusOptions,
        embedder: Embedder,
        catalog: Catalog,
        writer: Writer,
        model_id: Callable[[], str],
        max_k: int,
        max_queries: int = MAX_QUERIES,
        max_filters: int = MAX_FILTERS,
    ) -> None:
        self.milvus = Milvus(options)
        self.configs = ConfigStore(self.milvus)
        self.embedder = embedder
        self.catalog = catalog
        self.writer = writer
        self.model_id = model_id
        self.searcher = MilvusSearch(self.milvus, embedder, max_k, max_queries, max_filters)
        self._cache: dict[str, Record] = {}
        self._lock = threading.Lock()

    # --- the registry --------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        record = self.configs.get(name) if isinstance(name, str) and name else None
        with self._lock:
            if record is None:
                self._cache.pop(name, None)
            else:
                self._cache[name] = record
        return record is not None

    def record(self, name: str) -> Record:
        """The collection's record: cached, else read from Milvus (created through another replica)."""
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None:
            return cached
        if not self.has(name):
            names = [r.config.name for r in self.configs.all()]
            have = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
            raise NotFound(f"collection {name!r} does not exist (backend milvus; collections: {have})")
        with self._lock:
            return self._cache[name]

    def current(self, name: str) -> Record:
        """The collection's record read from Milvus now (for a drop, a config: a cached one may be stale)."""
        self._forget(name)
        return self.record(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)

    def _fresh(self, name: str, fn: Callable[[Record], Any]) -> Any:
        """fn(record); when Milvus says the chunk collection is gone (dropped, maybe re-created, through
        another replica), forget the cached record and try once more with a fresh one. Every call on a
        collection's data goes through here, so a replica's cache is never wrong twice."""
        try:
            return fn(self.record(name))
        except NotFound:
            self._forget(name)
            return fn(self.record(name))

    # --- collections ---------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> CollectionStats:
        dense_index(config.index)
        if config.sparse == "learned" and config.query_idf:
            raise FailedPrecondition(
                "query_idf is not available on backend milvus (Milvus keeps no per-term document counts for "
                "learned-sparse vectors): create the collection with query_idf=false (`--no-query-idf`)"
            )
        if config.dense == "none":
            raise FailedPrecondition(
                "dense='none' is not available on backend milvus (its collections keep a dense vector field): "
                "create a sparse-only collection on backend faiss"
            )
        dim = self.catalog.validate_new(config)
        if self.has(config.name):
            raise AlreadyExists(f"collection {config.name!r} already exists (backend milvus)")
        physical = f"lodestar_{secrets.token_hex(8)}"
        client = self.milvus.client
        self.milvus.call(
            f"creating collection {config.name!r}",
            "create_collection",
            physical,
            schema=chunk_schema(client, dim, config.sparse),
            index_params=chunk_indexes(client, config.index, config.metric, config.sparse),
            consistency_level="Strong",
            num_shards=config.shards,
        )
        record = Record(config, dim, self.model_id(), physical)
        try:
            self.configs.put(record)  # the collection exists for every replica from here on
        except BaseException:
            self.milvus.call(f"dropping {physical}", "drop_collection", physical)
            raise
        with self._lock:
            self._cache[config.name] = record
        return self.stats(config.name)

    def drop(self, name: str) -> None:
        record = self.current(name)
        self.configs.delete(name)  # other replicas stop finding it first
        self._forget(name)
        self.milvus.call(f"dropping collection {name!r}", "drop_collection", record.physical)

    def list(self) -> builtins.list[CollectionStats]:
        out = []
        for record in self.configs.all():
            with self._lock:
                self._cache[record.config.name] = record
            try:
                out.append(self._stats(record))
            except NotFound:  # dropped meanwhile
                pass
        return out

    def config(self, name: str) -> CollectionConfig:
        return self.current(name).config

    def status(self) -> dict[str, str]:
        return {r.config.name: "ok" for r in self.configs.all()}

    def stats(self, name: str) -> CollectionStats:
        return self._fresh(name, self._stats)

    def _stats(self, record: Record) -> CollectionStats:
        what = f"counting collection {record.config.name!r}"
        count = "count(*)"
        chunks = self.milvus.call(what, "query", record.physical, filter="chunk >= 0", output_fields=[count])
        docs = self.milvus.call(what, "query", record.physical, filter="chunk == 0", output_fields=[count])
        n_chunks, n_docs = int(chunks[0][count]), int(docs[0][count])
        return CollectionStats(
            name=record.config.name,
            documents=n_docs,
            chunks=n_chunks,
            index=record.config.index,
            trained=True,
            index_vectors=n_chunks,
            bytes=0,  # Milvus's storage, not this server's disk
            dimensions=record.dim,
            sparse=record.config.sparse,
            status="ok",
            note=f"backend milvus: Milvus collection {record.physical}",
        )

    # --- documents -----------------------------------------------------------------------------

    def upsert(self, name: str, docs: builtins.list[Document]) -> tuple[int, int]:
        metadata = self._check_docs(docs)

        def write(record: Record) -> tuple[int, int]:
            return self._write(record, prepare(self.embedder, record.config, record.dim, docs), metadata)

        return self._fresh(name, write)

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        record = self.current(name)
        return record.config, record.dim, self.model_id()

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        metadata = self._check_docs(prepared.docs)

        def write(record: Record) -> tuple[int, int]:
            check_prepared(name, record.config, record.dim, prepared, model, self.model_id())
            return self._write(record, prepared, metadata)

        return self._fresh(name, write)

    def _check_docs(self, docs: builtins.list[Document]) -> builtins.list[str]:
        """The embedded backend's checks, then Milvus's field limits; -> each document's metadata JSON."""
        metadata = self.writer.validate_docs(docs)
        for i, (d, meta) in enumerate(zip(docs, metadata)):
            for what, text in (("text", d.text), ("metadata (as JSON)", meta)):
                size = len(text.encode("utf-8"))
                if size > MAX_VARCHAR:
                    raise InvalidInput(
                        f"document {i} ({d.id[:80]!r}): {what} is {size} bytes; a Milvus VARCHAR field holds at most "
                        f"{MAX_VARCHAR} (backend milvus): split the document"
                    )
            if len(d.id) > MAX_ID_CHARS:
                raise InvalidInput(f"document {i}: id is {len(d.id)} characters; backend milvus holds {MAX_ID_CHARS}")
        return metadata

    def _write(self, record: Record, prepared: Prepared, metadata: builtins.list[str]) -> tuple[int, int]:
        """Delete the documents' old chunks, insert the new ones; -> (documents, chunks) written."""
        rows: list[dict[str, Any]] = []
        at = 0
        texts = prepared.chunk_texts
        bm25 = record.config.sparse == "bm25"
        for d, spans, meta in zip(prepared.docs, prepared.spans, metadata):
            typed = typed_metadata(d.metadata)
            for idx, (start, end) in enumerate(spans):
                row: dict[str, Any] = {
                    "pk": f"{idx}:{d.id}",
                    "doc_id": d.id,
                    "chunk": idx,
                    "start": int(start),
                    "end": int(end),
                    "text": bm25_text(texts[at]) if bm25 else "",
                    "doc_text": d.text if idx == 0 else "",
                    "doc_meta": meta if idx == 0 else "",
                    "meta": typed,
                    "vector": prepared.vectors[at].tolist(),
                }
                if prepared.sparse is not None:
                    row["learned"] = sparse_row(*prepared.sparse[at])
                rows.append(row)
                at += 1
        name = record.config.name
        self._delete_ids(record, [d.id for d in prepared.docs], f"replacing documents in {name!r}")
        for i in range(0, len(rows), INSERT_BATCH):
            self.milvus.call(f"writing to collection {name!r}", "insert", record.physical, rows[i : i + INSERT_BATCH])
        return len(prepared.docs), len(rows)

    def _delete_ids(self, record: Record, ids: builtins.list[str], what: str) -> None:
        for i in range(0, len(ids), QUERY_LIMIT):
            self.milvus.call(what, "delete", record.physical, filter=f"doc_id in {id_list(ids[i : i + QUERY_LIMIT])}")

    def delete(self, name: str, ids: builtins.list[str]) -> int:
        ids = self.writer.validate_ids(ids, "delete")

        def delete(record: Record) -> int:
            found = [d for d in self._documents(record, ids, fields=("doc_id",)) if d is not None]
            self._delete_ids(record, ids, f"deleting from collection {name!r}")
            return len(found)

        return self._fresh(name, delete) if ids else 0

    def get(self, name: str, ids: builtins.list[str]) -> builtins.list[Document | None]:
        ids = self.writer.validate_ids(ids, "get")
        return self._fresh(name, lambda record: self._documents(record, ids))

    def _documents(
        self, record: Record, ids: builtins.list[str], fields: tuple[str, ...] = ()
    ) -> builtins.list[Document | None]:
        """The documents for `ids` in order (None where absent), from their chunk-0 rows."""
        found = read_documents(self.milvus, record, ids, fields)
        return [found.get(i) for i in ids]

    # --- search --------------------------------------------------------------------------------

    def search(self, name: str, request: SearchRequest) -> builtins.list[builtins.list[Hit]]:
        return self._fresh(name, lambda record: self.searcher.search(record, request))

    # --- maintenance: Milvus's own ------------------------------------------------------------

    def snapshot(self, name: str) -> dict[str, Any]:
        self.record(name)
        raise FailedPrecondition(
            f"collection {name!r} is on backend milvus: Lodestar snapshots are FAISS's; {BACKUP_HINT}"
        )

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        self.record(name)
        raise FailedPrecondition(
            f"collection {name!r} is on backend milvus: restore it with Milvus's tools; {BACKUP_HINT}"
        )

    def rebuild(self, name: str) -> CollectionStats:
        self.record(name)
        raise FailedPrecondition(
            f"collection {name!r} is on backend milvus: Milvus builds and repairs its own indexes; {BACKUP_HINT}"
        )

    def close(self) -> None:
        self.milvus.close()
