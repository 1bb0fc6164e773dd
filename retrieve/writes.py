"""Writes to a collection: documents validated as a whole batch, chunked and embedded with no lock
held, then committed to the store in one transaction and applied to the indexes under the
collection's write lock (acknowledged = durable), with an automatic snapshot when one is due.
Also upserts of documents a worker prepared, deletes, and reads of stored documents.
"""

from __future__ import annotations

import numpy as np

from lodestar.cancel import checkpoint
from lodestar.embedding import Embedder
from lodestar.errors import InvalidInput, Unavailable, shown
from lodestar.retrieve.catalog import Catalog
from lodestar.retrieve.collection import Collection
from lodestar.retrieve.impact import sparse_vector
from lodestar.retrieve.persistence import Persistence
from lodestar.retrieve.prepare import DocLimits, Prepared, check_finite, check_id, prepare, validate_document
from lodestar.retrieve.store import DocWrite
from lodestar.retrieve.types import CollectionConfig, Document


def check_prepared(
    name: str, config: CollectionConfig, dim: int, prepared: Prepared, model: str, model_id: str
) -> None:
    """Check documents a worker chunked and embedded against the documents and the collection (any
    backend): spans inside each text, vectors of the right shape and finite, sparse vectors when the
    collection is learned-sparse; makes the vectors contiguous float32."""
    if model and model != model_id:
        raise InvalidInput(f"vectors were made by model {model!r}; collection {name!r} is embedded with {model_id!r}")
    if len(prepared.spans) != len(prepared.docs):
        raise InvalidInput(f"{len(prepared.spans)} span lists for {len(prepared.docs)} documents")
    for i, (d, sp) in enumerate(zip(prepared.docs, prepared.spans)):
        if not sp or any(not 0 <= a < b <= len(d.text) for a, b in sp):
            raise InvalidInput(
                f"document {i} ({d.id[:80]!r}): chunk spans {sp[:4]} are empty or outside its {len(d.text)} characters"
            )
    chunks = sum(len(sp) for sp in prepared.spans)
    if prepared.vectors.shape != (chunks, dim):
        raise InvalidInput(
            f"vectors have shape {tuple(prepared.vectors.shape)}; {chunks} chunks of collection {name!r} need ({chunks}, {dim})"
        )
    prepared.vectors = np.ascontiguousarray(prepared.vectors, dtype=np.float32)
    check_finite(prepared.vectors, prepared.chunk_texts, "chunk")
    if (config.sparse == "learned") != (prepared.sparse is not None):
        raise InvalidInput(
            f"collection {name!r} has sparse={config.sparse!r}: learned-sparse vectors are "
            f"{'needed' if config.sparse == 'learned' else 'not expected'}"
        )
    if prepared.sparse is not None and len(prepared.sparse) != chunks:
        raise InvalidInput(f"{len(prepared.sparse)} sparse vectors for {chunks} chunks")


class Writer:
    """Upserts, deletes and reads of documents in the catalog's collections."""

    def __init__(
        self,
        catalog: Catalog,
        persistence: Persistence,
        embedder: Embedder,
        limits: DocLimits,
        max_docs_per_upsert: int,
    ) -> None:
        self.catalog = catalog
        self.persistence = persistence
        self.embedder = embedder
        self.limits = limits
        self.max_docs_per_upsert = max_docs_per_upsert

    def upsert(self, name: str, docs: list[Document]) -> tuple[int, int]:
        """Insert or replace documents; returns (documents, chunks) written. Durable on return."""
        c = self.catalog.get(name)
        metadata = self.validate_docs(docs)
        c.check_serving()
        assert c.config is not None
        prepared = prepare(self.embedder, c.config, c.dim, docs)  # no lock held while the model runs
        return self._write(c, prepared, metadata)

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        """(config, vector width, model id) a worker must prepare documents for."""
        c = self.catalog.get(name)
        c.check_serving()
        assert c.config is not None
        return c.config, c.dim, self.persistence.model_id()

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        """Write documents a worker chunked and embedded (see prepare.py): the spans and vectors are
        checked against the documents and the collection first; a rejected batch writes nothing."""
        c = self.catalog.get(name)
        metadata = self.validate_docs(prepared.docs)
        c.check_serving()
        assert c.config is not None
        check_prepared(name, c.config, c.dim, prepared, model, self.persistence.model_id())
        return self._write(c, prepared, metadata)

    def _write(self, c: Collection, prepared: Prepared, metadata: list[str]) -> tuple[int, int]:
        """Commit prepared documents to the store and the indexes; -> (documents, chunks) written."""
        writes: list[DocWrite] = []
        at = 0
        vectors = prepared.vectors  # (C, D)
        texts = prepared.chunk_texts
        # Checked before the store takes them (a worker's, or this server's embedder's): a stored
        # vector the index refuses would fail the apply and every rebuild after it.
        sparse = (
            None
            if prepared.sparse is None
            else [
                sparse_vector(t, w, f"sparse vector {i} (of {len(prepared.sparse)} chunks)")
                for i, (t, w) in enumerate(prepared.sparse)
            ]
        )
        for d, sp, meta in zip(prepared.docs, prepared.spans, metadata):
            writes.append(
                DocWrite(
                    id=d.id,
                    text=d.text,
                    metadata_json=meta,
                    spans=sp,
                    vectors=vectors[at : at + len(sp)],
                    sparse=sparse[at : at + len(sp)] if sparse is not None else None,
                )
            )
            at += len(sp)
        checkpoint()  # a cancelled call writes nothing; once the transaction begins it completes
        with c.lock.write():
            c.check_serving()
            checkpoint()
            assert c.store is not None
            result = c.store.write_docs(writes)  # committed: acknowledged = durable
            self.persistence.apply(c, result, vectors, texts, sparse)
        self.persistence.maybe_snapshot(c)
        return len(prepared.docs), len(texts)

    def delete(self, name: str, ids: list[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        c = self.catalog.get(name)
        ids = self.validate_ids(ids, "delete")
        if not ids:
            return 0
        with c.lock.write():
            c.check_serving()
            assert c.store is not None
            result = c.store.delete_docs(ids)
            if result.count:
                self.persistence.apply(c, result, None, [])
        if result.count:
            self.persistence.maybe_snapshot(c)
        return result.count

    def get(self, name: str, ids: list[str]) -> list[Document | None]:
        """The documents for `ids` in order (None where absent); served from the store."""
        c = self.catalog.get(name)
        ids = self.validate_ids(ids, "get")
        with c.lock.read():
            c.check_open()
            if c.store is None:
                raise Unavailable(f"collection {name!r} is not serving: {c.status}")
            return c.store.get_docs(ids)

    # --- validation --------------------------------------------------------------------------

    def validate_docs(self, docs: list[Document]) -> list[str]:
        """Check the whole batch before anything is written; returns each document's metadata JSON."""
        limit = self.max_docs_per_upsert
        if not isinstance(docs, (list, tuple)) or not docs:
            raise InvalidInput(f"no documents: send 1 to {limit} per upsert")
        if len(docs) > limit:
            raise InvalidInput(f"{len(docs)} documents in one upsert; the limit is max_docs_per_upsert={limit}")
        seen: dict[str, int] = {}
        out: list[str] = []
        for i, doc in enumerate(docs):
            out.append(validate_document(doc, self.limits, f"document {i}"))
            if doc.id in seen:
                raise InvalidInput(
                    f"document {i} (id {doc.id[:80]!r}): id repeats document {seen[doc.id]} of this batch; ids must be unique within a batch"
                )
            seen[doc.id] = i
        return out

    def validate_ids(self, ids: list[str], what: str) -> list[str]:
        """Check a list of document ids (for a delete or get) against the batch limit."""
        limit = self.max_docs_per_upsert
        if not isinstance(ids, (list, tuple)):
            raise InvalidInput(f"ids must be a list of strings, got {type(ids).__name__}")
        if len(ids) > limit:
            raise InvalidInput(f"{len(ids)} ids in one {what}; the limit is max_docs_per_upsert={limit}")
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise InvalidInput(f"id {i} ({shown(doc_id)}) is not a non-empty string")
            check_id(doc_id, f"id {i} ({shown(doc_id, 80)})")
        return list(ids)
