"""The embedded backend: FAISS dense indexes and SQLite stores under one folder (catalog.py,
writes.py, search.py), exactly as before backends existed; the laptop default."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from lodestar.embedding import Embedder
from lodestar.retrieve.catalog import Catalog
from lodestar.retrieve.filters import MAX_FILTERS
from lodestar.retrieve.persistence import SNAPSHOT_EVERY, Persistence
from lodestar.retrieve.prepare import DocLimits, Prepared
from lodestar.retrieve.search import MAX_QUERIES, Searcher
from lodestar.retrieve.types import CollectionConfig, CollectionStats, Document, Hit, SearchRequest
from lodestar.retrieve.writes import Writer


class FaissBackend:
    """Collections under `root` (one folder each); thread-safe: a lock per collection."""

    def __init__(
        self,
        root: Path,
        embedder: Embedder,
        limits: DocLimits,
        *,
        max_k: int,
        max_docs_per_upsert: int,
        faiss_threads: int = 0,
        restore_dirs: tuple[Path, ...] = (),
        max_queries: int = MAX_QUERIES,
        max_filters: int = MAX_FILTERS,
    ) -> None:
        self.persistence = Persistence(embedder, SNAPSHOT_EVERY)
        self.catalog = Catalog(root, embedder, self.persistence, restore_dirs)  # opens every collection
        self.writer = Writer(self.catalog, self.persistence, embedder, limits, max_docs_per_upsert)
        self.searcher = Searcher(self.catalog, embedder, max_k, faiss_threads, max_queries, max_filters)

    def has(self, name: str) -> bool:
        return name in self.catalog.collections

    def create(self, config: CollectionConfig) -> CollectionStats:
        return self.catalog.create(config)

    def drop(self, name: str) -> None:
        self.catalog.drop(name)

    def list(self) -> builtins.list[CollectionStats]:
        return self.catalog.list()

    def config(self, name: str) -> CollectionConfig:
        return self.catalog.config(name)

    def status(self) -> dict[str, str]:
        return self.catalog.status()

    def stats(self, name: str) -> CollectionStats:
        return self.catalog.stats(name)

    def upsert(self, name: str, docs: builtins.list[Document]) -> tuple[int, int]:
        return self.writer.upsert(name, docs)

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        return self.writer.target(name)

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        return self.writer.upsert_prepared(name, prepared, model)

    def delete(self, name: str, ids: builtins.list[str]) -> int:
        return self.writer.delete(name, ids)

    def get(self, name: str, ids: builtins.list[str]) -> builtins.list[Document | None]:
        return self.writer.get(name, ids)

    def search(self, name: str, request: SearchRequest) -> builtins.list[builtins.list[Hit]]:
        return self.searcher.search(name, request)

    def snapshot(self, name: str) -> dict[str, Any]:
        return self.catalog.snapshot(name)

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        return self.catalog.restore(name, snapshot_dir)

    def rebuild(self, name: str) -> CollectionStats:
        return self.catalog.rebuild(name)

    def close(self) -> None:
        self.catalog.close()
