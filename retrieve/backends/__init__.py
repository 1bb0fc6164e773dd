"""Collection backends: where a collection's chunks, vectors and sparse weights live and are searched.

`faiss` (embedded, the default): FAISS and SQLite under the server's data folder, one process.
`milvus`: a Milvus deployment (Milvus Lite, Standalone or Distributed) holds everything, including
the collection configs, so any number of stateless `lodestar serve` replicas share its collections.
The engine (`retrieve/engine.py`) routes each call by collection name to one `Backend`.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, Protocol

from lodestar.retrieve.prepare import Prepared
from lodestar.retrieve.types import CollectionConfig, CollectionStats, Document, Hit, SearchRequest

BACKENDS = ("faiss", "milvus")


class Backend(Protocol):
    """What a collection engine does; every method takes the collection's name."""

    def has(self, name: str) -> bool:
        """Whether this backend holds collection `name` (a fresh look, not only a cache)."""
        ...

    def create(self, config: CollectionConfig) -> CollectionStats: ...

    def drop(self, name: str) -> None: ...

    def list(self) -> builtins.list[CollectionStats]: ...

    def config(self, name: str) -> CollectionConfig: ...

    def status(self) -> dict[str, str]: ...

    def stats(self, name: str) -> CollectionStats: ...

    def upsert(self, name: str, docs: builtins.list[Document]) -> tuple[int, int]: ...

    def target(self, name: str) -> tuple[CollectionConfig, int, str]: ...

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]: ...

    def delete(self, name: str, ids: builtins.list[str]) -> int: ...

    def get(self, name: str, ids: builtins.list[str]) -> builtins.list[Document | None]: ...

    def search(self, name: str, request: SearchRequest) -> builtins.list[builtins.list[Hit]]: ...

    def snapshot(self, name: str) -> dict[str, Any]: ...

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats: ...

    def rebuild(self, name: str) -> CollectionStats: ...

    def close(self) -> None: ...
