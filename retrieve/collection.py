"""One open collection: its store, in-memory indexes, serving status and the lock that guards them.

Locking (shared by the engine's parts): the engine's registry lock guards the set of collections
(create, drop, list, close); each collection's RWLock lets searches read together while one writer
(a write, snapshot, restore or rebuild) mutates its store and indexes. Status and `closed` are
re-checked once the lock is held (`check_open`, `check_serving`): a drop or close may have come first.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lodestar.errors import NotFound, Unavailable
from lodestar.retrieve.bm25 import BM25Index
from lodestar.retrieve.impact import ImpactIndex
from lodestar.retrieve.shards import AnyDense
from lodestar.retrieve.store import Store, disk_full, is_disk_full
from lodestar.retrieve.types import CollectionConfig

SNAPSHOT_DIR = "snapshot"

SparseIndex = BM25Index | ImpactIndex
SPARSE_INDEXES: dict[str, type[BM25Index] | type[ImpactIndex]] = {
    "bm25": BM25Index,
    "learned": ImpactIndex,
}  # by config.sparse


class RWLock:
    """Many readers (searches) or one writer (index mutation); waiting writers block new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold shared access: waits while a writer holds or waits for the lock."""
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold exclusive access: new readers wait from the moment a writer waits."""
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class Collection:
    """One open collection: its store, in-memory indexes and serving status."""

    name: str
    directory: Path
    config: CollectionConfig | None = None
    store: Store | None = None
    dim: int = 0
    dense: AnyDense | None = None
    sparse: SparseIndex | None = None
    status: str = "ok"
    applied_seq: int = 0  # last change applied to the in-memory indexes
    snapshot_seq: int = 0  # last change covered by the on-disk snapshot
    closed: str = ""  # why the collection can no longer be used ("dropped", "closed")
    calibration: dict[str, Any] | None = None  # hybrid fusion=auto: the stored choice and its evidence (calibrate.py)

    def __post_init__(self) -> None:
        self.lock = RWLock()

    @property
    def snapshot_dir(self) -> Path:
        """Where the collection's verified snapshot lives."""
        return self.directory / SNAPSHOT_DIR

    def check_open(self) -> None:
        """Call with the collection's lock held: it may have been dropped or closed meanwhile."""
        if self.closed == "dropped":
            raise NotFound(f"collection {self.name!r} was dropped")
        if self.closed:
            raise Unavailable("the retrieval engine is closed")

    def check_serving(self) -> None:
        """check_open, and the indexes are loaded (status "ok")."""
        self.check_open()
        if self.status != "ok":
            raise Unavailable(f"collection {self.name!r} is not serving: {self.status}")


@contextmanager
def disk_space(where: str, what: str) -> Iterator[None]:
    """A full disk while writing `where` becomes Overloaded (RESOURCE_EXHAUSTED) saying `what` holds."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        if is_disk_full(e):
            raise disk_full(where, e, what) from e
        raise


def fix_hint(name: str) -> str:
    """What to do about a collection whose indexes are corrupt."""
    return f"fix: run `lodestar collection rebuild {name}` (rebuilds the indexes from the document store) or restore a good snapshot"
