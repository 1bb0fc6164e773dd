"""The retrieval engine: named collections of documents, searched densely (FAISS), sparsely (BM25)
or both (fusion), with durable writes and verified snapshots.

Plain Python: no gRPC here. Durability path of a write:
    validate the whole batch -> chunk by tokens -> embed (no lock held)
    -> collection write lock -> ONE SQLite transaction (docs, chunks with float32 vectors, change rows)
       committed with WAL + synchronous=FULL  (acknowledged = durable)
    -> apply the same change to the in-memory DenseIndex / BM25Index
    -> every `snapshot_every` changes: index bytes + manifest (SHA-256) written atomically, log pruned.
On start each collection loads its verified snapshot and replays the changes logged after it
(or rebuilds from SQLite when there is no snapshot); a snapshot that fails verification marks only
that collection "corrupt: ..." until `rebuild` or `restore`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.embedding import SPARSE_CAP, Embedder
from lodestar.errors import AlreadyExists, InvalidInput, NotFound, Unavailable
from lodestar.retrieve.bm25 import BM25Index
from lodestar.retrieve.dense import DenseIndex, search_threads
from lodestar.retrieve.feedback import MAX_FEEDBACK_CHUNKS, feedback_query
from lodestar.retrieve.fusion import rrf, weighted
from lodestar.retrieve.impact import ImpactIndex, sparse_vector
from lodestar.retrieve.prepare import (
    DocLimits,
    Prepared,
    SparseVec,
    check_finite,
    embed_options,
    embed_sparse,
    embed_texts,
    prepare,
    validate_document,
)
from lodestar.retrieve.snapshot import (
    CorruptSnapshot,
    fsync_dir,
    has_snapshot,
    read_snapshot,
    snapshot_bytes,
    write_snapshot,
)
from lodestar.retrieve.shards import AnyDense, check_shards, dense_from_bytes, new_dense
from lodestar.retrieve.store import (
    ChunkRef,
    CompiledFilter,
    DocWrite,
    Store,
    StoreError,
    WriteResult,
    compile_filters,
    disk_full,
    is_disk_full,
)
from lodestar.retrieve.types import (
    FUSIONS,
    METRICS,
    RETRIEVERS,
    SPARSE_KINDS,
    CollectionConfig,
    CollectionStats,
    Document,
    Hit,
    SearchRequest,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
SNAPSHOT_DIR = "snapshot"
SNAPSHOT_EVERY = 1000  # changes (one per document written or deleted) between automatic snapshots
MAX_QUERIES = 10000  # queries in one search request
MAX_CHUNK_TOKENS = 8192
CANDIDATE_FACTOR = 4  # chunk candidates fetched per wanted document (chunks aggregate to documents)
HYBRID_DEPTH = 100  # each retriever's document ranking depth before fusion: max(k, this)
REPLAY_BATCH = 4096


class _RWLock:
    """Many readers (searches) or one writer (index mutation); waiting writers block new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
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
class _Collection:
    """One open collection: its store, in-memory indexes and serving status."""

    name: str
    directory: Path
    config: CollectionConfig | None = None
    store: Store | None = None
    dim: int = 0
    dense: AnyDense | None = None
    sparse: BM25Index | None = None
    status: str = "ok"
    applied_seq: int = 0  # last change applied to the in-memory indexes
    snapshot_seq: int = 0  # last change covered by the on-disk snapshot
    closed: str = ""  # why the collection can no longer be used ("dropped", "closed")

    def __post_init__(self) -> None:
        self.lock = _RWLock()

    @property
    def snapshot_dir(self) -> Path:
        return self.directory / SNAPSHOT_DIR


@dataclass
class _Ranked:
    """One document in one query's ranking."""

    doc_id: str
    score: float
    ref: ChunkRef
    dense: float | None = None
    sparse: float | None = None


@contextmanager
def _disk_space(where: str, what: str) -> Iterator[None]:
    """A full disk while writing `where` becomes Overloaded (RESOURCE_EXHAUSTED) saying `what` holds."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        if is_disk_full(e):
            raise disk_full(where, e, what) from e
        raise


def _fix_hint(name: str) -> str:
    return f"fix: run `lodestar collection rebuild {name}` (rebuilds the indexes from the document store) or restore a good snapshot"


class RetrievalEngine:
    """Collections under `root` (one folder each); thread-safe: a lock per collection."""

    snapshot_every: int = SNAPSHOT_EVERY

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
        self._lock = threading.Lock()  # the registry: create, drop, list, close
        self._closed = False
        self._collections: dict[str, _Collection] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            if path.name.startswith((".create-", ".drop-")):  # an interrupted create or drop
                shutil.rmtree(path, ignore_errors=True)
                continue
            if NAME_RE.fullmatch(path.name):
                self._collections[path.name] = self._open(path)
                c = self._collections[path.name]
                if c.status != "ok":
                    log.error("collection %r is not serving: %s", c.name, c.status)

    # --- helpers -------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """The embedding model's full dimension."""
        return int(self.embedder.backbone.hidden_size)

    def _embed(self, c: _Collection, texts: list[str], query: bool) -> np.ndarray:
        """(N, D) float32 vectors of `texts` with the collection's doc or query options."""
        assert c.config is not None
        return embed_texts(self.embedder, c.config, texts, c.dim, query)

    def _get(self, name: str) -> _Collection:
        if self._closed:
            raise Unavailable("the retrieval engine is closed")
        if not isinstance(name, str) or not name:
            raise InvalidInput("collection name is empty")
        c = self._collections.get(name)
        if c is None:
            names = sorted(self._collections)
            have = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
            raise NotFound(f"collection {name!r} does not exist (collections: {have})")
        return c

    def _check_open(self, c: _Collection) -> None:
        """Call with the collection's lock held: it may have been dropped or closed meanwhile."""
        if c.closed == "dropped":
            raise NotFound(f"collection {c.name!r} was dropped")
        if c.closed:
            raise Unavailable("the retrieval engine is closed")

    def _check_serving(self, c: _Collection) -> None:
        self._check_open(c)
        if c.status != "ok":
            raise Unavailable(f"collection {c.name!r} is not serving: {c.status}")

    # --- opening, loading, snapshots ---------------------------------------------------------

    def _open(self, directory: Path) -> _Collection:
        """Open one collection folder; never raises: a problem becomes the collection's status."""
        c = _Collection(name=directory.name, directory=directory)
        try:
            c.store = Store(directory)
            c.config = CollectionConfig(**{"query_idf": False, **c.store.config})  # stored before query_idf existed: as they were
            c.dim = int(c.store.meta["dim"])
        except (StoreError, TypeError, KeyError, ValueError) as e:
            if c.store is not None:
                c.store.close()
                c.store = None
            c.status = f"corrupt: the document store cannot be opened ({e}); restore the folder {directory} from a backup or drop the collection"
            return c
        want = c.config.dimensions or self.hidden_size
        if want != c.dim:
            c.status = (
                f"incompatible: the collection holds {c.dim}-dim vectors but the embedding model gives {want}; "
                f"serve it with the model it was built with (model {c.store.meta.get('model', '?')!r}), or drop and re-create it"
            )
            return c
        model = c.store.meta.get("model", "")
        if model and model != self._model_id():
            log.warning("collection %r was built with model %r; the server runs %r", c.name, model, self._model_id())
        built = self._load(c, use_snapshot=True)
        if c.status == "ok" and c.applied_seq > c.snapshot_seq and (built or c.applied_seq - c.snapshot_seq >= self.snapshot_every):
            try:  # so the next start loads instead of rebuilding or replaying a long log
                self._snapshot_locked(c)
            except Exception:
                log.exception("collection %r: snapshot after opening failed", c.name)
        return c

    def _model_id(self) -> str:
        return str(getattr(self.embedder.backbone, "model_id", ""))

    def _new_dense(self, c: _Collection) -> AnyDense:
        assert c.config is not None
        return new_dense(c.dim, c.config.index, c.config.metric, c.config.shards)

    def _new_sparse(self, c: _Collection) -> BM25Index | ImpactIndex | None:
        assert c.config is not None
        return {"bm25": BM25Index, "learned": ImpactIndex}.get(c.config.sparse, lambda: None)()

    def _read_indexes(
        self, c: _Collection, snapshot: tuple[dict[str, bytes], dict[str, Any]] | None = None
    ) -> tuple[AnyDense, BM25Index | None, int]:
        """Verified snapshot (the collection's own, or `snapshot`) -> (dense, sparse, seq); CorruptSnapshot if not."""
        assert c.store is not None and c.config is not None
        files, manifest = snapshot if snapshot is not None else read_snapshot(c.snapshot_dir)
        self._check_manifest(c, manifest, c.store.last_seq())
        try:
            dense = dense_from_bytes(files["dense"])
            kind = {"bm25": BM25Index, "learned": ImpactIndex}.get(c.config.sparse)
            sparse = kind.from_bytes(files["sparse"]) if kind is not None else None
        except Exception as e:  # verified bytes that do not parse: written by a broken or other build
            raise CorruptSnapshot(f"snapshot files of {c.snapshot_dir} verify but do not load: {e}") from None
        return dense, sparse, int(manifest["seq"])

    def _load(self, c: _Collection, use_snapshot: bool, loaded: tuple[AnyDense, BM25Index | None, int] | None = None) -> bool:
        """Bring the indexes up to the store: verified snapshot + replay, or a full build; sets the
        status. Returns True when it built from the store (so a fresh snapshot is worth writing)."""
        assert c.store is not None and c.config is not None
        c.dense = c.sparse = None
        try:
            last = c.store.last_seq()  # inside: a damaged store marks this collection, not the whole engine
            if loaded is None and use_snapshot and has_snapshot(c.snapshot_dir):
                try:
                    loaded = self._read_indexes(c)
                except CorruptSnapshot as e:
                    c.status = f"corrupt: {e}; {_fix_hint(c.name)}"
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
                log.warning("collection %r: the change log was pruned past snapshot seq %d; rebuilding from the store", c.name, seq)
            else:
                c.snapshot_seq = 0
            self._build(c)
        except Exception as e:
            log.exception("collection %r: loading the indexes failed", c.name)
            c.dense = c.sparse = None
            if isinstance(e, sqlite3.DatabaseError):  # the source of truth itself: a rebuild cannot help
                c.status = (f"corrupt: the document store cannot be read ({e}); restore the folder {c.directory} "
                            "from a backup or drop the collection")
            else:
                c.status = f"corrupt: the indexes could not be loaded ({type(e).__name__}: {e}); {_fix_hint(c.name)}"
            return False
        c.applied_seq = last
        c.status = "ok"
        return True

    def _check_manifest(self, c: _Collection, manifest: dict[str, Any], last_seq: int) -> None:
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

    def _replay(self, c: _Collection, seq: int) -> None:
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

    def _build(self, c: _Collection) -> None:
        """Fresh indexes from every chunk in the store (vectors and texts; nothing is re-embedded)."""
        assert c.store is not None
        c.dense, c.sparse = self._new_dense(c), self._new_sparse(c)
        for ids, vectors, texts in c.store.iter_chunks(c.dim):
            self._add(c, ids, vectors, texts)

    def _add(self, c: _Collection, ids: np.ndarray, vectors: np.ndarray, texts: list[str],
             sparse: list[SparseVec] | None = None) -> None:
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

    def _apply(self, c: _Collection, result: WriteResult, vectors: np.ndarray | None, texts: list[str],
               sparse: list[SparseVec] | None = None) -> None:
        """Apply a committed write to the indexes; if that fails, rebuild them from the store."""
        assert c.dense is not None
        try:
            if len(result.removed):
                c.dense.remove(result.removed)
                if c.sparse is not None:
                    c.sparse.remove(result.removed)
            if vectors is not None:
                self._add(c, result.added, vectors, texts, sparse)
        except Exception:
            log.exception("collection %r: applying change %d to the indexes failed; rebuilding them from the store", c.name, result.seq)
            try:
                self._build(c)
            except Exception as e:
                log.exception("collection %r: rebuild after a failed apply failed", c.name)
                c.status = f"corrupt: the indexes could not be updated or rebuilt ({e}); {_fix_hint(c.name)}"
        c.applied_seq = result.seq

    def _snapshot_locked(self, c: _Collection) -> dict[str, Any]:
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

    def _snapshot_due(self, c: _Collection) -> bool:
        """Every `snapshot_every` changes, and no more often than every count/8 changes, so a bulk
        load does not rewrite a large index after each batch (snapshot I/O stays O(1) per change)."""
        if c.status != "ok" or c.closed or c.dense is None:
            return False
        return c.applied_seq - c.snapshot_seq >= max(self.snapshot_every, c.dense.count // 8)

    def _maybe_snapshot(self, c: _Collection) -> None:
        """After a write: an automatic snapshot when due. A failure is logged, not raised: the write
        itself is already durable. (Under the write lock: BM25Index.to_bytes compacts in place.)"""
        if not self._snapshot_due(c):
            return
        with c.lock.write():
            if not self._snapshot_due(c):  # another thread took it meanwhile
                return
            try:
                self._snapshot_locked(c)
            except Exception:
                log.exception("collection %r: automatic snapshot failed (the write is durable; will retry)", c.name)

    # --- validation --------------------------------------------------------------------------

    def _validate_config(self, config: CollectionConfig) -> int:
        """Check every field of a new collection's config; returns its vector dimension."""
        name = config.name
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"bad collection name {name!r}: use 1 to 64 characters from A-Z a-z 0-9 _ . - , not starting with '.' or '-'"
            )
        self.embedder.check_mode(config.mode)
        for field_name in ("query_prompt", "doc_prompt"):
            try:
                self.embedder.check_mode(config.mode, getattr(config, field_name))
            except InvalidInput as e:
                raise InvalidInput(f"{field_name}: {e}") from None
        if config.metric not in METRICS:
            raise InvalidInput(f"unknown metric {config.metric!r}: valid metrics are {', '.join(METRICS)}")
        if config.sparse not in SPARSE_KINDS:
            raise InvalidInput(f"unknown sparse kind {config.sparse!r}: valid kinds are {', '.join(SPARSE_KINDS)}")
        if config.sparse == "learned":
            self.embedder.check_mode(config.sparse_mode)
            for key in ("sparse_top_k", "query_top_k"):
                value = getattr(config, key)
                if not isinstance(value, int) or not 1 <= value <= SPARSE_CAP:
                    raise InvalidInput(f"{key}={value} is out of range: use 1..{SPARSE_CAP}")
        hidden = self.hidden_size
        if not isinstance(config.dimensions, int) or not 0 <= config.dimensions <= hidden:
            raise InvalidInput(f"dimensions={config.dimensions} is out of range: use 1..{hidden} (or 0 for all {hidden})")
        if not isinstance(config.chunk_tokens, int) or not 0 <= config.chunk_tokens <= MAX_CHUNK_TOKENS:
            raise InvalidInput(f"chunk_tokens={config.chunk_tokens} is out of range: use 0 (no chunking) to {MAX_CHUNK_TOKENS}")
        max_tokens = getattr(self.embedder, "max_tokens", None)
        if isinstance(max_tokens, int) and config.chunk_tokens > max_tokens:
            raise InvalidInput(
                f"chunk_tokens={config.chunk_tokens} is above the embedding model's max_tokens={max_tokens}: chunks would be truncated"
            )
        if config.chunk_tokens and (not isinstance(config.chunk_overlap, int) or not 0 <= config.chunk_overlap < config.chunk_tokens):
            raise InvalidInput(
                f"chunk_overlap={config.chunk_overlap} must be at least 0 and less than chunk_tokens={config.chunk_tokens}"
            )
        check_shards(config.shards)
        dim = config.dimensions or hidden
        DenseIndex.validate(dim, config.index, config.metric)
        return dim

    def _validate_docs(self, docs: list[Document]) -> list[str]:
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

    def _validate_ids(self, ids: list[str], what: str) -> list[str]:
        limit = self.max_docs_per_upsert
        if not isinstance(ids, (list, tuple)):
            raise InvalidInput(f"ids must be a list of strings, got {type(ids).__name__}")
        if len(ids) > limit:
            raise InvalidInput(f"{len(ids)} ids in one {what}; the limit is max_docs_per_upsert={limit}")
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise InvalidInput(f"id {i} ({doc_id!r}) is not a non-empty string")
        return list(ids)

    def _validate_search(self, c: _Collection, request: SearchRequest) -> CompiledFilter | None:
        queries = request.queries
        if not isinstance(queries, (list, tuple)) or not queries:
            raise InvalidInput(f"queries is empty: send 1 to {MAX_QUERIES} queries")
        if len(queries) > MAX_QUERIES:
            raise InvalidInput(f"{len(queries)} queries in one search; the limit is {MAX_QUERIES}")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise InvalidInput(f"query {i} is empty")
        if not isinstance(request.k, int) or isinstance(request.k, bool) or not 1 <= request.k <= self.max_k:
            raise InvalidInput(f"k={request.k} is out of range: use 1..{self.max_k}")
        if request.retriever not in RETRIEVERS:
            raise InvalidInput(f"unknown retriever {request.retriever!r}: valid retrievers are {', '.join(RETRIEVERS)}")
        if request.fusion not in FUSIONS:
            raise InvalidInput(f"unknown fusion {request.fusion!r}: valid fusions are {', '.join(FUSIONS)}")
        alpha = request.alpha
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise InvalidInput(f"alpha={alpha} is out of range: use 0..1 (1 = dense only, 0 = sparse only)")
        if not isinstance(request.rrf_k, int) or request.rrf_k < 0:
            raise InvalidInput(f"rrf_k={request.rrf_k} must be a non-negative integer (60 is the usual value)")
        fb, fw = request.feedback_chunks, request.feedback_weight
        if not isinstance(fb, int) or isinstance(fb, bool) or not 0 <= fb <= MAX_FEEDBACK_CHUNKS:
            raise InvalidInput(f"feedback_chunks={fb} is out of range: use 0..{MAX_FEEDBACK_CHUNKS} (0 = no feedback; 3 is a good start)")
        if not isinstance(fw, (int, float)) or not math.isfinite(fw) or not 0.0 < fw <= 10.0:
            raise InvalidInput(f"feedback_weight={fw} is out of range: use a number in (0, 10] (1 is the usual value)")
        b = request.length_norm
        if not isinstance(b, (int, float)) or not math.isfinite(b) or not 0.0 <= b <= 1.0:
            raise InvalidInput(f"length_norm={b} is out of range: use 0..1 (0 = off; 0.5 is a good start)")
        assert c.config is not None
        for name, value in (("feedback_chunks", fb), ("length_norm", b)):
            if value and (request.retriever == "dense" or c.config.sparse != "learned"):
                raise InvalidInput(
                    f"{name} needs a learned sparse side searched (retriever sparse or hybrid); collection {c.name!r} has "
                    f"sparse={c.config.sparse!r} and the request retriever={request.retriever!r}"
                )
        if request.retriever in ("sparse", "hybrid") and c.config.sparse == "none":
            raise InvalidInput(
                f"retriever {request.retriever!r} needs a sparse index, but collection {c.name!r} was created with sparse='none'; "
                f"use retriever='dense' or create a collection with sparse='bm25'"
            )
        return compile_filters(list(request.filters or ()))

    # --- collections -------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> CollectionStats:
        """Create an empty collection; its config is fixed from now on."""
        if self._closed:
            raise Unavailable("the retrieval engine is closed")
        dim = self._validate_config(config)
        if config.name in self._collections:
            raise AlreadyExists(f"collection {config.name!r} already exists")
        for query in (False, True):  # the embedder checks what only it knows (adapter, prompts) and the width
            vectors = self.embedder.embed(["probe"], embed_options(config, query)).vectors
            if np.asarray(vectors).shape != (1, dim):
                raise InvalidInput(f"the embedder returned shape {np.asarray(vectors).shape} for dimensions={config.dimensions}; expected (1, {dim})")
            if config.sparse == "learned":
                try:
                    embed_sparse(self.embedder, config, ["probe"], query)
                except InvalidInput as e:
                    raise InvalidInput(f"sparse encoder (sparse_mode={config.sparse_mode!r}, sparse_adapter={config.sparse_adapter!r}): {e}") from None
        with self._lock:
            if self._closed:
                raise Unavailable("the retrieval engine is closed")
            final = self.root / config.name
            if config.name in self._collections or final.exists():
                raise AlreadyExists(f"collection {config.name!r} already exists")
            tmp = self.root / f".create-{config.name}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                meta = {"dim": str(dim), "model": self._model_id(), "collection": config.name}
                Store.initialise(tmp, asdict(config), meta)
                fsync_dir(tmp)
                os.rename(tmp, final)  # the collection appears whole or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.root)
            c = self._open(final)
            self._collections[config.name] = c
        return self.stats(config.name)

    def drop(self, name: str) -> None:
        """Delete a collection and its files."""
        with self._lock:
            c = self._get(name)
            del self._collections[name]
        with c.lock.write():
            c.closed = "dropped"
            if c.store is not None:
                c.store.close()
            trash = self.root / f".drop-{name}-{secrets.token_hex(4)}"
            try:
                os.rename(c.directory, trash)  # gone at once; a crash before rmtree is cleaned on start
            except OSError as e:  # the folder is still there: serve it again rather than have it reappear at the next start
                with self._lock:
                    if not self._closed and name not in self._collections:
                        self._collections[name] = self._open(c.directory)
                raise Unavailable(f"collection {name!r} was not dropped: moving its folder {c.directory} aside failed ({e}); "
                                  f"it is still served; fix the cause and drop it again") from e
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[CollectionStats]:
        """Stats of every collection, by name."""
        if self._closed:
            raise Unavailable("the retrieval engine is closed")
        out = []
        for name in sorted(self._collections):
            try:
                out.append(self.stats(name))
            except NotFound:  # dropped meanwhile
                pass
        return out

    def config(self, name: str) -> CollectionConfig:
        """The collection's config as created."""
        c = self._get(name)
        if c.config is None:
            raise Unavailable(f"collection {name!r} is not serving: {c.status}")
        return c.config

    def status(self) -> dict[str, str]:
        """collection -> "ok" or why it is not serving."""
        return {name: c.status for name, c in sorted(self._collections.items())}

    # --- documents ---------------------------------------------------------------------------

    def upsert(self, name: str, docs: list[Document]) -> tuple[int, int]:
        """Insert or replace documents; returns (documents, chunks) written. Durable on return."""
        c = self._get(name)
        metadata = self._validate_docs(docs)
        self._check_serving(c)
        assert c.config is not None
        prepared = prepare(self.embedder, c.config, c.dim, docs)  # no lock held while the model runs
        return self._write(c, prepared, metadata)

    def target(self, name: str) -> tuple[CollectionConfig, int, str]:
        """(config, vector width, model id) a worker must prepare documents for."""
        c = self._get(name)
        self._check_serving(c)
        assert c.config is not None
        return c.config, c.dim, self._model_id()

    def upsert_prepared(self, name: str, prepared: Prepared, model: str = "") -> tuple[int, int]:
        """Write documents a worker chunked and embedded (see prepare.py): the spans and vectors are
        checked against the documents and the collection first; a rejected batch writes nothing."""
        c = self._get(name)
        metadata = self._validate_docs(prepared.docs)
        self._check_serving(c)
        if model and model != self._model_id():
            raise InvalidInput(f"vectors were made by model {model!r}; collection {name!r} is embedded with {self._model_id()!r}")
        if len(prepared.spans) != len(prepared.docs):
            raise InvalidInput(f"{len(prepared.spans)} span lists for {len(prepared.docs)} documents")
        for i, (d, sp) in enumerate(zip(prepared.docs, prepared.spans)):
            if not sp or any(not 0 <= a < b <= len(d.text) for a, b in sp):
                raise InvalidInput(f"document {i} ({d.id[:80]!r}): chunk spans {sp[:4]} are empty or outside its {len(d.text)} characters")
        chunks = sum(len(sp) for sp in prepared.spans)
        if prepared.vectors.shape != (chunks, c.dim):
            raise InvalidInput(f"vectors have shape {tuple(prepared.vectors.shape)}; {chunks} chunks of collection {name!r} need ({chunks}, {c.dim})")
        prepared.vectors = np.ascontiguousarray(prepared.vectors, dtype=np.float32)
        check_finite(prepared.vectors, prepared.chunk_texts, "chunk")
        assert c.config is not None
        if (c.config.sparse == "learned") != (prepared.sparse is not None):
            raise InvalidInput(f"collection {name!r} has sparse={c.config.sparse!r}: learned-sparse vectors are "
                               f"{'needed' if c.config.sparse == 'learned' else 'not expected'}")
        if prepared.sparse is not None and len(prepared.sparse) != chunks:
            raise InvalidInput(f"{len(prepared.sparse)} sparse vectors for {chunks} chunks")
        return self._write(c, prepared, metadata)

    def _write(self, c: _Collection, prepared: Prepared, metadata: list[str]) -> tuple[int, int]:
        writes: list[DocWrite] = []
        at = 0
        vectors = prepared.vectors  # (C, D)
        texts = prepared.chunk_texts
        # Checked before the store takes them (a worker's, or this server's embedder's): a stored
        # vector the index refuses would fail the apply and every rebuild after it.
        sparse = None if prepared.sparse is None else [
            sparse_vector(t, w, f"sparse vector {i} (of {len(prepared.sparse)} chunks)") for i, (t, w) in enumerate(prepared.sparse)]
        for d, sp, meta in zip(prepared.docs, prepared.spans, metadata):
            writes.append(DocWrite(id=d.id, text=d.text, metadata_json=meta, spans=sp, vectors=vectors[at : at + len(sp)],
                                   sparse=sparse[at : at + len(sp)] if sparse is not None else None))
            at += len(sp)
        with c.lock.write():
            self._check_serving(c)
            assert c.store is not None
            result = c.store.write_docs(writes)  # committed: acknowledged = durable
            self._apply(c, result, vectors, texts, sparse)
        self._maybe_snapshot(c)
        return len(prepared.docs), len(texts)

    def delete(self, name: str, ids: list[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        c = self._get(name)
        ids = self._validate_ids(ids, "delete")
        if not ids:
            return 0
        with c.lock.write():
            self._check_serving(c)
            assert c.store is not None
            result = c.store.delete_docs(ids)
            if result.count:
                self._apply(c, result, None, [])
        if result.count:
            self._maybe_snapshot(c)
        return result.count

    def get(self, name: str, ids: list[str]) -> list[Document | None]:
        """The documents for `ids` in order (None where absent); served from the store."""
        c = self._get(name)
        ids = self._validate_ids(ids, "get")
        with c.lock.read():
            self._check_open(c)
            if c.store is None:
                raise Unavailable(f"collection {name!r} is not serving: {c.status}")
            return c.store.get_docs(ids)

    # --- search ------------------------------------------------------------------------------

    def search(self, name: str, request: SearchRequest) -> list[list[Hit]]:
        """One list of document hits per query, best first."""
        c = self._get(name)
        self._check_serving(c)
        where = self._validate_search(c, request)
        queries = list(request.queries)
        qvecs = self._embed(c, queries, query=True) if request.retriever != "sparse" else None  # (Q, D)
        k = request.k
        with c.lock.read():
            self._check_serving(c)
            assert c.store is not None and c.dense is not None
            allowed = c.store.allowed_chunk_ids(where) if where is not None else None  # (A,) or None
            if allowed is not None and not len(allowed):
                return [[] for _ in queries]
            depth = max(k, HYBRID_DEPTH) if request.retriever == "hybrid" else k
            dense = sparse = None
            if request.retriever in ("dense", "hybrid"):
                assert qvecs is not None
                dense = self._rank(c, self._dense_fn(c, qvecs, allowed), len(queries), depth, c.dense.count, allowed)
            if request.retriever in ("sparse", "hybrid"):
                assert c.sparse is not None
                sparse = self._rank(c, self._sparse_fn(c, queries, allowed, request), len(queries), depth, c.sparse.count, allowed)
            if request.retriever == "dense":
                assert dense is not None
                ranked = [[_Ranked(r.doc_id, r.score, r.ref, dense=r.score) for r in row[:k]] for row in dense]
            elif request.retriever == "sparse":
                assert sparse is not None
                ranked = [[_Ranked(r.doc_id, r.score, r.ref, sparse=r.score) for r in row[:k]] for row in sparse]
            else:
                assert dense is not None and sparse is not None
                ranked = [self._fuse(d, s, request)[:k] for d, s in zip(dense, sparse)]
            return self._hits(c, ranked, request.include_text)

    def _dense_fn(self, c: _Collection, qvecs: np.ndarray, allowed: np.ndarray | None) -> Callable[[int], list[list[tuple[int, float]]]]:
        def run(n: int) -> list[list[tuple[int, float]]]:
            assert c.dense is not None
            with search_threads(len(qvecs), self.faiss_threads):
                scores, ids = c.dense.search(qvecs, n, allowed)  # (Q, n), (Q, n) with -1 padding
            return [[(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]

        return run

    def _sparse_fn(self, c: _Collection, queries: list[str], allowed: np.ndarray | None,
                   request: SearchRequest) -> Callable[[int], list[list[tuple[int, float]]]]:
        """Call with the collection's read lock held. Learned sparse: encoded once (the ranking may ask
        for more candidates), and with feedback_chunks each query gets the first ranking's top chunks added
        (`feedback_query`) before the ranking that counts."""
        encoded: list[Any] = list(queries)
        options: dict[str, Any] = {}
        if isinstance(c.sparse, ImpactIndex):
            assert c.config is not None and c.store is not None
            encoded = embed_sparse(self.embedder, c.config, queries, query=True)
            options |= {"idf": c.config.query_idf, "length_norm": request.length_norm}
            if request.feedback_chunks:
                first = c.sparse.search(encoded, request.feedback_chunks, allowed, **options)
                vectors = iter(c.store.chunk_sparse(np.array([i for row in first for i, _ in row], dtype=np.int64), reader=True))
                encoded = [feedback_query(q, [next(vectors) for _ in row], request.feedback_weight)  # one read for the batch
                           for q, row in zip(encoded, first)]

        def run(n: int) -> list[list[tuple[int, float]]]:
            assert c.sparse is not None
            return [[(int(i), float(s)) for i, s in row] for row in c.sparse.search(encoded, n, allowed, **options)]

        return run

    def _rank(
        self,
        c: _Collection,
        run: Callable[[int], list[list[tuple[int, float]]]],
        nq: int,
        depth: int,
        count: int,
        allowed: np.ndarray | None,
    ) -> list[list[_Ranked]]:
        """Per query, the top `depth` documents by their best chunk: fetch chunk candidates, and
        fetch more while a query has fewer than `depth` documents and more chunks remain."""
        assert c.store is not None
        available = min(count, len(allowed)) if allowed is not None else count
        if available <= 0:
            return [[] for _ in range(nq)]
        n = min(available, depth * CANDIDATE_FACTOR)
        while True:
            chunk_rows = run(n)
            refs = c.store.chunk_refs(sorted({i for row in chunk_rows for i, _ in row}))
            out: list[list[_Ranked]] = []
            for row in chunk_rows:
                docs: dict[str, _Ranked] = {}
                for chunk_id, score in row:  # best first, so a document's first chunk is its best
                    ref = refs.get(chunk_id)
                    if ref is not None and ref.doc_id not in docs:
                        docs[ref.doc_id] = _Ranked(ref.doc_id, score, ref)
                out.append(list(docs.values()))
            short = any(len(docs) < depth and len(row) >= n for docs, row in zip(out, chunk_rows))
            if not short or n >= available:
                return [row[:depth] for row in out]
            n = min(available, n * CANDIDATE_FACTOR)

    def _fuse(self, dense: list[_Ranked], sparse: list[_Ranked], request: SearchRequest) -> list[_Ranked]:
        """Hybrid: fuse the two document rankings; the reported chunk is the dense one when present."""
        d = {r.doc_id: r for r in dense}
        s = {r.doc_id: r for r in sparse}
        dl = [(r.doc_id, r.score) for r in dense]
        sl = [(r.doc_id, r.score) for r in sparse]
        fused = rrf([dl, sl], k=request.rrf_k) if request.fusion == "rrf" else weighted(dl, sl, alpha=request.alpha)
        out = []
        for doc_id, score in fused:
            best = d.get(doc_id) or s[doc_id]
            out.append(
                _Ranked(
                    doc_id,
                    float(score),
                    best.ref,
                    dense=d[doc_id].score if doc_id in d else None,
                    sparse=s[doc_id].score if doc_id in s else None,
                )
            )
        return out

    def _hits(self, c: _Collection, ranked: list[list[_Ranked]], include_text: bool) -> list[list[Hit]]:
        assert c.store is not None
        rows = c.store.doc_rows(sorted({r.doc_id for row in ranked for r in row}))
        out: list[list[Hit]] = []
        for row in ranked:
            hits = []
            for r in row:
                if r.doc_id not in rows:
                    continue
                text, metadata = rows[r.doc_id]
                hits.append(
                    Hit(
                        id=r.doc_id,
                        score=r.score,
                        text=text if include_text else "",
                        metadata=metadata,
                        chunk=r.ref.idx,
                        chunk_text=text[r.ref.start : r.ref.end] if include_text else "",
                        dense_score=r.dense,
                        sparse_score=r.sparse,
                    )
                )
            out.append(hits)
        return out

    # --- maintenance -------------------------------------------------------------------------

    def snapshot(self, name: str) -> dict[str, Any]:
        """Write the collection's indexes as a verified snapshot now; returns the manifest."""
        c = self._get(name)
        with c.lock.write():
            self._check_serving(c)
            with _disk_space(f"the snapshot of collection {name!r}", "the previous snapshot is kept and the collection keeps serving"):
                return self._snapshot_locked(c)

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        """Load a verified snapshot of this collection (e.g. a backup copy), then replay the store's
        log (or rebuild from the store if the log no longer reaches back to the snapshot)."""
        c = self._get(name)
        snapshot_dir = Path(snapshot_dir)
        if self.restore_dirs and not any(snapshot_dir.resolve().is_relative_to(d) for d in self.restore_dirs):
            raise InvalidInput(f"cannot restore {name!r} from {str(snapshot_dir)!r}: snapshots are read only from "
                               f"{', '.join(map(str, self.restore_dirs))} (LODESTAR_RESTORE_DIRS)")
        try:
            files, manifest = read_snapshot(snapshot_dir)
        except CorruptSnapshot as e:
            raise InvalidInput(f"cannot restore {name!r}: {e}") from None
        with c.lock.write():
            self._check_open(c)
            if c.store is None or c.config is None:
                raise Unavailable(f"collection {name!r} is not serving: {c.status}")
            self._check_width(c, "restored")  # else a restore would mark an incompatible collection "ok"
            try:
                loaded = self._read_indexes(c, (files, manifest))
            except CorruptSnapshot as e:
                raise InvalidInput(f"cannot restore {name!r} from {snapshot_dir}: {e}") from None
            if snapshot_dir.resolve() != c.snapshot_dir.resolve():
                meta = {k: v for k, v in manifest.items() if k not in ("format_version", "files")}
                with _disk_space(f"the snapshot of collection {name!r}", f"nothing was restored; the collection is as it was ({c.status})"):
                    write_snapshot(c.snapshot_dir, files, meta)
            self._load(c, use_snapshot=True, loaded=loaded)
            if c.status == "ok" and c.applied_seq != c.snapshot_seq:
                with _disk_space(f"the snapshot of collection {name!r}", "the collection was restored and serves; its snapshot on disk is the restored one"):
                    self._snapshot_locked(c)
        return self.stats(name)

    def _check_width(self, c: _Collection, done: str) -> None:
        """Refuse to bring back a collection whose vectors the running model cannot produce."""
        assert c.config is not None
        want = c.config.dimensions or self.hidden_size
        if want != c.dim:
            model = c.store.meta.get("model", "?") if c.store is not None else "?"
            raise Unavailable(
                f"collection {c.name!r} cannot be {done} with this model: it holds {c.dim}-dim vectors, the model gives {want}; "
                f"serve it with the model it was built with (model {model!r})"
            )

    def rebuild(self, name: str) -> CollectionStats:
        """Rebuild the indexes from the store (vectors and texts), dropping tombstones; clears a
        corrupt status and writes a fresh snapshot."""
        c = self._get(name)
        with c.lock.write():
            self._check_open(c)
            if c.store is None or c.config is None:
                reopened = self._open(c.directory)  # the folder may have been restored by hand
                if reopened.store is None:
                    raise Unavailable(f"collection {name!r} cannot be rebuilt: {c.status}")
                c.store, c.config, c.dim = reopened.store, reopened.config, reopened.dim
            self._check_width(c, "rebuilt")
            self._load(c, use_snapshot=False)
            if c.status != "ok":
                raise Unavailable(f"collection {name!r} could not be rebuilt: {c.status}")
            with _disk_space(f"the snapshot of collection {name!r}", "the indexes were rebuilt and serve; the snapshot on disk was not updated"):
                self._snapshot_locked(c)
        return self.stats(name)

    def stats(self, name: str) -> CollectionStats:
        """Counts, index state and bytes on disk."""
        c = self._get(name)
        with c.lock.read():
            self._check_open(c)
            documents, chunks = c.store.counts() if c.store is not None else (0, 0)
            size = (c.store.disk_bytes() if c.store is not None else 0) + snapshot_bytes(c.snapshot_dir)
            cfg = c.config
            dense = c.dense if c.status == "ok" else None
            return CollectionStats(
                name=c.name,
                documents=documents,
                chunks=chunks,
                index=cfg.index if cfg else "",
                trained=bool(dense.trained) if dense is not None else False,
                index_vectors=int(dense.count) if dense is not None else 0,
                bytes=size,
                dimensions=c.dim,
                sparse=cfg.sparse if cfg else "",
                status=c.status,
                note=str(dense.note or "") if dense is not None else "",
            )

    def close(self) -> None:
        """Snapshot collections with unsnapshotted changes, then close every store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            collections = list(self._collections.values())
        for c in collections:
            with c.lock.write():
                if c.closed:
                    continue
                if c.status == "ok" and c.store is not None and c.applied_seq > c.snapshot_seq:
                    try:
                        self._snapshot_locked(c)
                    except Exception:
                        log.exception("collection %r: snapshot on close failed (the store has every write)", c.name)
                c.closed = "closed"
                if c.store is not None:
                    c.store.close()
