"""Persistence of one collection: its in-memory indexes brought in line with its document store.

Opening loads the verified snapshot and replays the changes logged after it (or builds from the
store when there is none); a committed write is applied to the indexes (rebuilt from the store if
that fails); every `snapshot_every` changes the indexes are written as a verified snapshot and the
log is pruned. A snapshot that fails verification marks only that collection "corrupt: ...".
Callers hold the collection's write lock where a method says so (`collection.py`).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.embedding import Embedder
from lodestar.errors import Unavailable
from lodestar.retrieve.calibrate import read as read_calibration
from lodestar.retrieve.collection import SPARSE_INDEXES, Collection, SparseIndex, fix_hint
from lodestar.retrieve.impact import ImpactIndex
from lodestar.retrieve.prepare import SparseVec
from lodestar.retrieve.shards import AnyDense, dense_from_bytes, new_dense
from lodestar.retrieve.snapshot import CorruptSnapshot, has_snapshot, read_snapshot, write_snapshot
from lodestar.retrieve.store import Store, StoreError, WriteResult
from lodestar.retrieve.types import CollectionConfig

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 1000  # changes (one per document written or deleted) between automatic snapshots
REPLAY_BATCH = 4096

Loaded = tuple[AnyDense, SparseIndex | None, int]  # indexes read from a snapshot, and the change it covers


class Persistence:
    """Opens, loads, updates and snapshots collections for an engine serving `embedder`'s model."""

    def __init__(self, embedder: Embedder, snapshot_every: int = SNAPSHOT_EVERY) -> None:
        self.embedder = embedder
        self.snapshot_every = snapshot_every

    @property
    def hidden_size(self) -> int:
        """The embedding model's full dimension."""
        return int(self.embedder.backbone.hidden_size)

    def open(self, directory: Path) -> Collection:
        """Open one collection folder; never raises: a problem becomes the collection's status."""
        c = Collection(name=directory.name, directory=directory)
        try:
            c.store = Store(directory)
            c.config = CollectionConfig(
                **{"query_idf": False, **c.store.config}
            )  # stored before query_idf existed: as they were
            c.dim = int(c.store.meta["dim"])
        except (StoreError, TypeError, KeyError, ValueError) as e:
            if c.store is not None:
                c.store.close()
                c.store = None
            c.status = f"corrupt: the document store cannot be opened ({e}); restore the folder {directory} from a backup or drop the collection"
            return c
        want = self.width(c.config)
        if want != c.dim:
            c.status = (
                f"incompatible: the collection holds {c.dim}-dim vectors but the embedding model gives {want}; "
                f"serve it with the model it was built with (model {c.store.meta.get('model', '?')!r}), or drop and re-create it"
            )
            return c
        c.calibration = read_calibration(directory)
        model = c.store.meta.get("model", "")
        if model and model != self.model_id():
            log.warning("collection %r was built with model %r; the server runs %r", c.name, model, self.model_id())
        built = self.load(c, use_snapshot=True)
        if (
            c.status == "ok"
            and c.applied_seq > c.snapshot_seq
            and (built or c.applied_seq - c.snapshot_seq >= self.snapshot_every)
        ):
            try:  # so the next start loads instead of rebuilding or replaying a long log
                self.snapshot_locked(c)
            except Exception:
                log.exception("collection %r: snapshot after opening failed", c.name)
        return c

    def width(self, config: CollectionConfig) -> int:
        """The vector width a collection with `config` holds: 0 without a dense side."""
        return 0 if config.dense == "none" else config.dimensions or self.hidden_size

    def model_id(self) -> str:
        """The embedding model's id ("" when it has none): stored with a collection, checked on writes."""
        return str(getattr(self.embedder.backbone, "model_id", ""))

    def _new_dense(self, c: Collection) -> AnyDense:
        """An empty dense index for the collection's config."""
        assert c.config is not None
        return new_dense(c.dim, c.config.index, c.config.metric, c.config.shards)

    def _new_sparse(self, c: Collection) -> SparseIndex | None:
        """An empty sparse index of the collection's kind (None for sparse='none')."""
        assert c.config is not None
        kind = SPARSE_INDEXES.get(c.config.sparse)
        return kind() if kind is not None else None

    def read_indexes(self, c: Collection, snapshot: tuple[dict[str, bytes], dict[str, Any]] | None = None) -> Loaded:
        """Verified snapshot (the collection's own, or `snapshot`) -> (dense, sparse, seq); CorruptSnapshot if not."""
        assert c.store is not None and c.config is not None
        files, manifest = snapshot if snapshot is not None else read_snapshot(c.snapshot_dir)
        self._check_manifest(c, manifest, c.store.last_seq())
        try:
            dense = dense_from_bytes(files["dense"])
            kind = SPARSE_INDEXES.get(c.config.sparse)
            sparse = kind.from_bytes(files["sparse"]) if kind is not None else None
        except Exception as e:  # verified bytes that do not parse: written by a broken or other build
            raise CorruptSnapshot(f"snapshot files of {c.snapshot_dir} verify but do not load: {e}") from None
        return dense, sparse, int(manifest["seq"])

    def load(self, c: Collection, use_snapshot: bool, loaded: Loaded | None = None) -> bool:
        """Bring the indexes up to the store: verified snapshot + replay, or a full build; sets the
        status. Returns True when it built from the store (so a fresh snapshot is worth writing)."""
        assert c.store is not None and c.config is not None
        c.dense = c.sparse = None
        try:
            last = c.store.last_seq()  # inside: a damaged store marks this collection, not the whole engine
            if loaded is None and use_snapshot and has_snapshot(c.snapshot_dir):
                try:
                    loaded = self.read_indexes(c)
                except CorruptSnapshot as e:
                    c.status = f"corrupt: {e}; {fix_hint(c.name)}"
                    return False
            if loaded is not None:
                dense, sparse, seq = loaded
                c.snapshot_seq = seq
                if seq >= c.store.pruned_through():
                    c.dense, c.sparse = dense, sparse
                    self._replay(c, seq)
                    c.applied_seq = last
                    c.status = "ok"
                    return False
                log.warning(
                    "collection %r: the change log was pruned past snapshot seq %d; rebuilding from the store",
                    c.name,
                    seq,
                )
            else:
                c.snapshot_seq = 0
            self._build(c)
        except Exception as e:
            log.exception("collection %r: loading the indexes failed", c.name)
            c.dense = c.sparse = None
            if isinstance(e, sqlite3.DatabaseError):  # the source of truth itself: a rebuild cannot help
                c.status = (
                    f"corrupt: the document store cannot be read ({e}); restore the folder {c.directory} "
                    "from a backup or drop the collection"
                )
            else:
                c.status = f"corrupt: the indexes could not be loaded ({type(e).__name__}: {e}); {fix_hint(c.name)}"
            return False
        c.applied_seq = last
        c.status = "ok"
        return True

    def _check_manifest(self, c: Collection, manifest: dict[str, Any], last_seq: int) -> None:
        """A verified snapshot must belong to this store and configuration."""
        assert c.store is not None and c.config is not None
        where = f"snapshot in {c.snapshot_dir}"
        if manifest.get("store_id") != c.store.meta.get("store_id"):
            raise CorruptSnapshot(f"{where} belongs to another document store (store_id {manifest.get('store_id')!r})")
        expect = {"dim": c.dim, "index": c.config.index, "metric": c.config.metric, "sparse": c.config.sparse}
        for key, value in expect.items():
            if manifest.get(key) != value:
                raise CorruptSnapshot(f"{where} has {key}={manifest.get(key)!r}; the collection has {key}={value!r}")
        seq = manifest.get("seq")
        if not isinstance(seq, int) or seq < 0:
            raise CorruptSnapshot(f"{where} has no valid seq")
        if seq > last_seq:
            raise CorruptSnapshot(f"{where} is at change {seq} but the document store's log ends at change {last_seq}")
        needed = {"dense"} | ({"sparse"} if c.config.sparse != "none" else set())
        missing = needed - set(manifest.get("files", {}))
        if missing:
            raise CorruptSnapshot(f"{where} lacks {', '.join(sorted(missing))}")

    def _replay(self, c: Collection, seq: int) -> None:
        """Redo every change after `seq`: drop each touched chunk id, re-add those still in the store."""
        assert c.store is not None and c.dense is not None
        touched = c.store.touched_since(seq)  # (T,)
        if not len(touched):
            return
        c.dense.remove(touched)
        if c.sparse is not None:
            c.sparse.remove(touched)
        for i in range(0, len(touched), REPLAY_BATCH):
            ids, vectors, texts = c.store.chunks_payload(touched[i : i + REPLAY_BATCH], c.dim)
            self._add(c, ids, vectors, texts)
        log.info("collection %r: replayed %d chunk ids after snapshot seq %d", c.name, len(touched), seq)

    def _build(self, c: Collection) -> None:
        """Fresh indexes from every chunk in the store (vectors and texts; nothing is re-embedded)."""
        assert c.store is not None
        c.dense, c.sparse = self._new_dense(c), self._new_sparse(c)
        for ids, vectors, texts in c.store.iter_chunks(c.dim):
            self._add(c, ids, vectors, texts)

    def _add(
        self,
        c: Collection,
        ids: np.ndarray,
        vectors: np.ndarray,
        texts: list[str],
        sparse: list[SparseVec] | None = None,
    ) -> None:
        """Add chunks to the indexes; a learned-sparse index takes `sparse` (read from the store when None)."""
        assert c.dense is not None
        if not len(ids):
            return
        c.dense.add(ids, vectors)
        if isinstance(c.sparse, ImpactIndex):
            assert c.store is not None
            c.sparse.add(ids, sparse if sparse is not None else c.store.chunk_sparse(ids))
        elif c.sparse is not None:
            c.sparse.add(ids, texts)

    def apply(
        self,
        c: Collection,
        result: WriteResult,
        vectors: np.ndarray | None,
        texts: list[str],
        sparse: list[SparseVec] | None = None,
    ) -> None:
        """Apply a committed write to the indexes (write lock held); if that fails, rebuild them from the store."""
        assert c.dense is not None
        try:
            if len(result.removed):
                c.dense.remove(result.removed)
                if c.sparse is not None:
                    c.sparse.remove(result.removed)
            if vectors is not None:
                self._add(c, result.added, vectors, texts, sparse)
        except Exception:
            log.exception(
                "collection %r: applying change %d to the indexes failed; rebuilding them from the store",
                c.name,
                result.seq,
            )
            try:
                self._build(c)
            except Exception as e:
                log.exception("collection %r: rebuild after a failed apply failed", c.name)
                c.status = f"corrupt: the indexes could not be updated or rebuilt ({e}); {fix_hint(c.name)}"
        c.applied_seq = result.seq

    def snapshot_locked(self, c: Collection) -> dict[str, Any]:
        """Write the indexes as a verified snapshot; call with the collection's write lock held
        (serialising is not read-only: BM25Index.to_bytes compacts)."""
        assert c.store is not None and c.config is not None and c.dense is not None
        files = {"dense": c.dense.to_bytes()}
        if c.sparse is not None:
            files["sparse"] = c.sparse.to_bytes()
        meta = {
            "seq": c.applied_seq,
            "store_id": c.store.meta["store_id"],
            "collection": c.name,
            "dim": c.dim,
            "index": c.config.index,
            "metric": c.config.metric,
            "sparse": c.config.sparse,
            "index_vectors": c.dense.count,
        }
        manifest = write_snapshot(c.snapshot_dir, files, meta)
        c.snapshot_seq = c.applied_seq
        c.store.prune_changes(c.applied_seq)  # the snapshot covers them; replay starts after it
        return manifest

    def _snapshot_due(self, c: Collection) -> bool:
        """Every `snapshot_every` changes, and no more often than every count/8 changes, so a bulk
        load does not rewrite a large index after each batch (snapshot I/O stays O(1) per change)."""
        if c.status != "ok" or c.closed or c.dense is None:
            return False
        return c.applied_seq - c.snapshot_seq >= max(self.snapshot_every, c.dense.count // 8)

    def maybe_snapshot(self, c: Collection) -> None:
        """After a write: an automatic snapshot when due. A failure is logged, not raised: the write
        itself is already durable. (Under the write lock: BM25Index.to_bytes compacts in place.)"""
        if not self._snapshot_due(c):
            return
        with c.lock.write():
            if not self._snapshot_due(c):  # another thread took it meanwhile
                return
            try:
                self.snapshot_locked(c)
            except Exception:
                log.exception("collection %r: automatic snapshot failed (the write is durable; will retry)", c.name)

    def check_width(self, c: Collection, done: str) -> None:
        """Refuse to bring back a collection whose vectors the running model cannot produce."""
        assert c.config is not None
        want = self.width(c.config)
        if want != c.dim:
            model = c.store.meta.get("model", "?") if c.store is not None else "?"
            raise Unavailable(
                f"collection {c.name!r} cannot be {done} with this model: it holds {c.dim}-dim vectors, the model gives {want}; "
                f"serve it with the model it was built with (model {model!r})"
            )
