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

`RetrievalEngine` is the one entry point; its parts hold one concept each: `collection.py` (an open
collection and its locks), `persistence.py` (open, load, replay, apply, snapshot), `catalog.py`
(create, drop, list, stats, restore, rebuild), `writes.py` (upsert, delete, get), `search.py`,
`calibrate.py` (the hybrid fusion `auto` uses, chosen per collection from pseudo-queries).
"""

from __future__ import annotations

import builtins
import time
from pathlib import Path
from typing import Any

from lodestar.embedding import Embedder
from lodestar.retrieve.calibrate import SEED, Calibrator
from lodestar.retrieve.catalog import Catalog
from lodestar.retrieve.persistence import SNAPSHOT_EVERY, Persistence
from lodestar.retrieve.prepare import DocLimits, Prepared
from lodestar.retrieve.search import Searcher
from lodestar.retrieve.snapshot import MANIFEST
from lodestar.retrieve.types import CollectionConfig, CollectionStats, Document, Hit, SearchRequest
from lodestar.retrieve.writes import Writer
from lodestar.telemetry import NOOP, Telemetry


class RetrievalEngine:
    """Collections under `root` (one folder each); thread-safe: a lock per collection."""

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
        self.persistence = Persistence(embedder, SNAPSHOT_EVERY)
        self.catalog = Catalog(self.root, embedder, self.persistence, self.restore_dirs)  # opens every collection
        self.writer = Writer(self.catalog, self.persistence, embedder, self.limits, max_docs_per_upsert)
        self.searcher = Searcher(self.catalog, embedder, max_k, faiss_threads)
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

    # --- collections (catalog.py) ------------------------------------------------------------

    def create(self, config: CollectionConfig) -> CollectionStats:
        """Create an empty collection; its config is fixed from now on."""
        return self.catalog.create(config)

    def drop(self, name: str) -> None:
        """Delete a collection and its files."""
        self.catalog.drop(name)

    def list(self) -> list[CollectionStats]:
        """Stats of every collection, by name."""
        return self.catalog.list()

    def config(self, name: str) -> CollectionConfig:
        """The collection's config as created."""
        return self.catalog.config(name)

    def status(self) -> dict[str, str]:
        """collection -> "ok" or why it is not serving."""
        return self.catalog.status()

    def snapshot_times(self) -> dict[str, float | None]:
        """collection -> when its current snapshot was written (epoch seconds), None before the first."""
        out: dict[str, float | None] = {}
        for name, c in list(self.catalog.collections.items()):
            try:
                out[name] = (c.snapshot_dir / MANIFEST).stat().st_mtime
            except OSError:
                out[name] = None
        return out

    def stats(self, name: str) -> CollectionStats:
        """Counts, index state and bytes on disk."""
        return self.catalog.stats(name)

    def snapshot(self, name: str) -> dict[str, Any]:
        """Write the collection's indexes as a verified snapshot now; returns the manifest."""
        return self.catalog.snapshot(name)

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        """Load a verified snapshot of this collection, then replay the store's log (see Catalog.restore)."""
        return self.catalog.restore(name, snapshot_dir)

    def rebuild(self, name: str) -> CollectionStats:
        """Rebuild the indexes from the store, clear a corrupt status, write a fresh snapshot."""
        return self.catalog.rebuild(name)

    def calibrate(self, name: str, seed: int = SEED) -> dict[str, Any]:
        """Choose the collection's hybrid fusion now from pseudo-queries (no labels); -> the record
        `stats` shows. Deterministic for a seed and the collection's contents."""
        return self.calibrator.calibrate(self.catalog.get(name), seed)

    def close(self) -> None:
        """Stop calibrations (their partial work resumes at the next start), snapshot collections with
        unsnapshotted changes, then close every store."""
        self.calibrator.close()
        self.catalog.close()

    # --- documents (writes.py) ---------------------------------------------------------------

    def upsert(self, name: str, docs: builtins.list[Document]) -> tuple[int, int]:
        """Insert or replace documents; returns (documents, chunks) written. Durable on return."""
        written = self.writer.upsert(name, docs)
        self.calibrator.after_write(self.catalog.get(name))
        return written

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        """(config, vector width, model id) a worker must prepare documents for."""
        return self.writer.target(name)

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        """Write documents a worker chunked and embedded, checked first (see Writer.upsert_prepared)."""
        written = self.writer.upsert_prepared(name, prepared, model)
        self.calibrator.after_write(self.catalog.get(name))
        return written

    def delete(self, name: str, ids: builtins.list[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        return self.writer.delete(name, ids)

    def get(self, name: str, ids: builtins.list[str]) -> builtins.list[Document | None]:
        """The documents for `ids` in order (None where absent); served from the store."""
        return self.writer.get(name, ids)

    # --- search (search.py) ------------------------------------------------------------------

    def search(self, name: str, request: SearchRequest) -> builtins.list[builtins.list[Hit]]:
        """One list of document hits per query, best first."""
        start = time.perf_counter()
        hits = self.searcher.search(name, request)
        self.telemetry.searched(request.retriever, time.perf_counter() - start)
        return hits
