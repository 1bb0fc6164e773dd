"""The retrieval engine: named collections of documents, searched densely (FAISS), sparsely (BM25 or
learned sparse) or both (fusion), with durable writes and verified snapshots.

Plain Python: no gRPC here. Durability path of a write:
    validate the whole batch -> chunk by tokens -> embed (no lock held)
    -> collection write lock -> ONE SQLite transaction (docs, chunks with float32 vectors, change rows)
       committed with WAL + synchronous=FULL  (acknowledged = durable)
    -> apply the same change to the in-memory DenseIndex / BM25Index
    -> every `snapshot_every` changes: index bytes + manifest (SHA-256) written atomically, log pruned.
On start each collection loads its verified snapshot and replays the changes logged after it
(or rebuilds from SQLite when there is no snapshot); a snapshot that fails verification marks only
that collection "corrupt: ..." until `rebuild` or `restore`.

`RetrievalEngine` is the one entry point. It routes each call by collection name to the backend
that holds the collection (`backends/`): `faiss` (this folder's parts: `collection.py` (an open
collection and its locks), `persistence.py` (open, load, replay, apply, snapshot), `catalog.py`
(create, drop, list, stats, restore, rebuild), `writes.py` (upsert, delete, get), `search.py`,
`calibrate.py` (the hybrid fusion `auto` uses, chosen per collection from pseudo-queries)), or
`milvus` when the server has a Milvus URI (`backends/milvus.py`), chosen by `CollectionConfig.backend`
at creation.
"""

from __future__ import annotations

import builtins
import logging
import time
from pathlib import Path
from typing import Any

from lodestar.embedding import Embedder
from lodestar.errors import AlreadyExists, FailedPrecondition, InvalidInput, LodestarError
from lodestar.retrieve.backends import BACKENDS, Backend
from lodestar.retrieve.backends.faiss import FaissBackend
from lodestar.retrieve.backends.milvus_store import MilvusOptions
from lodestar.retrieve.calibrate import SEED, Calibrator
from lodestar.retrieve.filters import MAX_FILTERS
from lodestar.retrieve.prepare import DocLimits, Prepared
from lodestar.retrieve.search import MAX_QUERIES
from lodestar.retrieve.snapshot import MANIFEST
from lodestar.retrieve.types import CollectionConfig, CollectionStats, Document, Hit, SearchRequest
from lodestar.telemetry import NOOP, Telemetry

log = logging.getLogger(__name__)


class RetrievalEngine:
    """Collections under `root` (FAISS, one folder each) and, with `milvus`, in a Milvus deployment;
    thread-safe: a lock per embedded collection, Milvus's own consistency for the others."""

    def __init__(
        self,
        root: Path,
        embedder: Embedder,
        *,
        max_k: int = 1000,
        max_id_bytes: int = 512,
        max_docs_per_upsert: int = 10000,
        max_text_chars: int = 1_000_000,
        faiss_threads: int = 0,
        restore_dirs: tuple[Path, ...] = (),
        milvus: MilvusOptions | None = None,
        milvus_only: bool = False,
        max_queries: int = MAX_QUERIES,
        max_filters: int = MAX_FILTERS,
        calibrate: bool = False,
    ) -> None:
        self.root = Path(root)
        self.restore_dirs = tuple(Path(d).resolve() for d in restore_dirs)  # () = any folder the server can read
        self.faiss_threads = faiss_threads  # per dense search; 0 = one for a few queries, FAISS's default for a batch
        self.embedder = embedder
        self.max_k = max_k
        self.max_id_bytes = max_id_bytes
        self.max_docs_per_upsert = max_docs_per_upsert
        self.max_text_chars = max_text_chars
        self.limits = DocLimits(max_id_bytes=max_id_bytes, max_text_chars=max_text_chars)
        self.faiss = FaissBackend(
            self.root,
            embedder,
            self.limits,
            max_k=max_k,
            max_docs_per_upsert=max_docs_per_upsert,
            faiss_threads=faiss_threads,
            restore_dirs=self.restore_dirs,
            max_queries=max_queries,
            max_filters=max_filters,
        )
        self.persistence = self.faiss.persistence
        self.catalog = self.faiss.catalog
        self.writer = self.faiss.writer
        self.searcher = self.faiss.searcher
        self.milvus: Backend | None = None  # None: every collection is embedded
        self.milvus_only = milvus_only  # a stateless replica: new collections must be on Milvus
        if milvus is not None:
            from lodestar.retrieve.backends.milvus import MilvusBackend

            self.milvus = MilvusBackend(
                milvus, embedder, self.catalog, self.writer, self.persistence.model_id, max_k, max_queries, max_filters
            )
        self.telemetry: Telemetry = NOOP  # the server sets its metrics here
        # calibrate: hybrid fusion=auto recalibrated in the background after writes (calibrate.py);
        # off, a collection calibrates only when asked (`calibrate`)
        self.calibrator = Calibrator(embedder, background=calibrate)
        for c in list(self.catalog.collections.values()):  # one stopped mid-way resumes
            self.calibrator.after_write(c)

    @property
    def hidden_size(self) -> int:
        """The embedding model's full dimension."""
        return self.persistence.hidden_size

    @property
    def snapshot_every(self) -> int:
        """Changes (one per document written or deleted) between automatic snapshots."""
        return self.persistence.snapshot_every

    @snapshot_every.setter
    def snapshot_every(self, value: int) -> None:
        self.persistence.snapshot_every = value

    def backend(self, name: str) -> Backend:
        """The backend holding collection `name`; the embedded one (whose NotFound lists its
        collections) when no backend has it."""
        if self.faiss.has(name) or self.milvus is None:
            return self.faiss
        return self.milvus if self.milvus.has(name) else self.faiss

    # --- collections ---------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> CollectionStats:
        """Create an empty collection in the backend its config names; its config is fixed from now on."""
        if config.backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {config.backend!r}: valid backends are {', '.join(BACKENDS)}")
        if config.backend == "faiss":
            if self.milvus_only:
                raise FailedPrecondition(
                    "this server is a stateless replica (LODESTAR_MILVUS_ONLY): its own disk is not kept, so it "
                    "creates collections on backend milvus only; create this one with backend milvus"
                )
            if self.milvus is not None and self.milvus.has(config.name):
                raise AlreadyExists(f"collection {config.name!r} already exists (backend milvus)")
            return self.faiss.create(config)
        if self.milvus is None:
            raise FailedPrecondition(
                "backend 'milvus' is not configured on this server: set LODESTAR_MILVUS_URI "
                "(a Milvus Lite folder, or http://host:19530) and restart it"
            )
        if self.faiss.has(config.name):
            raise AlreadyExists(f"collection {config.name!r} already exists (backend faiss)")
        return self.milvus.create(config)

    def drop(self, name: str) -> None:
        """Delete a collection and everything it holds."""
        self.backend(name).drop(name)

    def list(self) -> builtins.list[CollectionStats]:
        """Stats of every collection of every backend, by name."""
        out = self.faiss.list() + (self.milvus.list() if self.milvus is not None else [])
        return sorted(out, key=lambda s: s.name)

    def config(self, name: str) -> CollectionConfig:
        """The collection's config as created."""
        return self.backend(name).config(name)

    def status(self) -> dict[str, str]:
        """collection -> "ok" or why it is not serving."""
        out = self.faiss.status()
        if self.milvus is not None:
            try:
                out |= self.milvus.status()
            except LodestarError as e:  # Milvus down: the embedded collections still serve
                log.warning("the Milvus collections' status is unknown: %s", e)
        return dict(sorted(out.items()))

    def snapshot_times(self) -> dict[str, float | None]:
        """embedded collection -> when its current snapshot was written (epoch seconds), None before the first."""
        out: dict[str, float | None] = {}
        for name, c in builtins.list(self.catalog.collections.items()):
            try:
                out[name] = (c.snapshot_dir / MANIFEST).stat().st_mtime
            except OSError:
                out[name] = None
        return out

    def stats(self, name: str) -> CollectionStats:
        """Counts, index state and bytes on disk."""
        return self.backend(name).stats(name)

    def snapshot(self, name: str) -> dict[str, Any]:
        """Write the collection's indexes as a verified snapshot now; returns the manifest."""
        return self.backend(name).snapshot(name)

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        """Load a verified snapshot of this collection, then replay the store's log (see Catalog.restore)."""
        return self.backend(name).restore(name, snapshot_dir)

    def rebuild(self, name: str) -> CollectionStats:
        """Rebuild the indexes from the store, clear a corrupt status, write a fresh snapshot."""
        return self.backend(name).rebuild(name)

    def calibrate(self, name: str, seed: int = SEED) -> dict[str, Any]:
        """Choose the collection's hybrid fusion now from pseudo-queries (no labels); -> the record
        `stats` shows. Deterministic for a seed and the collection's contents."""
        if self.backend(name) is not self.faiss:
            raise FailedPrecondition(
                f"calibration is not available on backend milvus (collection {name!r}): its fusion=auto runs "
                "the fixed fallback; pass fusion rrf, weighted or dbsf to choose one"
            )
        return self.calibrator.calibrate(self.catalog.get(name), seed)

    def _written(self, backend: Backend, name: str) -> None:
        """After a write through `backend`: an embedded collection may be due for recalibration (Milvus
        ones are not calibrated). Takes the backend the write used: looking it up again costs a Milvus
        round trip for a Milvus collection."""
        if backend is self.faiss:
            self.calibrator.after_write(self.catalog.get(name))

    def close(self) -> None:
        """Stop calibrations (their partial work resumes at the next start), snapshot collections with
        unsnapshotted changes, then close every store."""
        self.calibrator.close()
        self.faiss.close()
        if self.milvus is not None:
            self.milvus.close()

    # --- documents -----------------------------------------------------------------------------

    def upsert(self, name: str, docs: builtins.list[Document]) -> tuple[int, int]:
        """Insert or replace documents; returns (documents, chunks) written. Durable on return."""
        backend = self.backend(name)
        written = backend.upsert(name, docs)
        self._written(backend, name)
        return written

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        """(config, vector width, model id) a worker must prepare documents for."""
        return self.backend(name).target(name)

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        """Write documents a worker chunked and embedded, checked first (see Writer.upsert_prepared)."""
        backend = self.backend(name)
        written = backend.upsert_prepared(name, prepared, model)
        self._written(backend, name)
        return written

    def delete(self, name: str, ids: builtins.list[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        return self.backend(name).delete(name, ids)

    def get(self, name: str, ids: builtins.list[str]) -> builtins.list[Document | None]:
        """The documents for `ids` in order (None where absent)."""
        return self.backend(name).get(name, ids)

    # --- search --------------------------------------------------------------------------------

    def search(self, name: str, request: SearchRequest) -> builtins.list[builtins.list[Hit]]:
        """One list of document hits per query, best first."""
        start = time.perf_counter()
        hits = self.backend(name).search(name, request)
        self.telemetry.searched(request.retriever, time.perf_counter() - start)
        return hits
