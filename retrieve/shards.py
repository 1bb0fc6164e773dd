"""Shard fan-out: one collection's dense vectors split over N FAISS indexes, searched in parallel.

A chunk id lives in shard ``id % N`` (chunk ids are handed out in sequence, so shards fill evenly).
A search runs on every shard at once on a thread pool (FAISS releases the GIL, and a single query on
one index uses one core), and the per-shard top-k lists merge into one. Each shard is a complete
``DenseIndex``: its own IVF/PQ training (at its own train_size), deletes, filters and GPU clone.

Why: one query against a Flat or HNSW index runs on one core however many the machine has; N shards
give one query N cores, and IVF/PQ shards train on N smaller samples. ``shards`` is fixed when the
collection is created (``CollectionConfig.shards``; 1 = a plain DenseIndex, the snapshot format of
collections made before shards existed).

Writes are all-or-nothing: every shard validates its part of an add before any shard inserts.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.dense import DenseIndex, index_note
from lodestar.retrieve.framing import frame, unframe
from lodestar.retrieve.ids import as_ids
from lodestar.retrieve.nodense import MAGIC as NO_DENSE
from lodestar.retrieve.nodense import NoDense

MAX_SHARDS = 64
PARALLEL_MIN = 20_000  # vectors in all below which shards are searched one after another
_MAGIC = b"LSSHARD1"
_FORMAT = 1
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One process-wide pool for every sharded collection (threads = cores)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="lodestar-shard")
        return _pool


def _search_on(
    shard: DenseIndex, queries: np.ndarray, k: int, allowed: np.ndarray | None, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's search on a pool thread, with FAISS's OpenMP threads for this thread capped: N
    shards each running every core's worth of threads made one query slower, not faster (measured:
    100k x 576 Flat, 2 cores: 22 ms uncapped, 8.4 ms capped, 10.9 ms for one index)."""
    faiss.omp_set_num_threads(threads)  # per calling thread
    return shard.search(queries, k, allowed)


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, M) candidate scores and ids (-inf / -1 padding) -> the best k per row, best first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


class ShardedDenseIndex:
    """N DenseIndex shards behind DenseIndex's interface (what the collection engine calls)."""

    def __init__(
        self, dim: int, spec: str = "Flat", metric: str = "cosine", shards: int = 2, train_size: int | None = None
    ) -> None:
        check_shards(shards)
        self.shards = [DenseIndex(dim, spec, metric, train_size) for _ in range(shards)]
        self.dim, self.spec, self.metric = dim, spec, metric

    @property
    def n(self) -> int:
        return len(self.shards)

    @property
    def trained(self) -> bool:
        return all(s.trained for s in self.shards)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def tombstones(self) -> int:
        return sum(s.tombstones for s in self.shards)

    @property
    def train_size(self) -> int:
        return self.shards[0].train_size

    @property
    def note(self) -> str:
        return index_note(self.spec, self.train_size, not self.trained, self.count, self.tombstones, self.n)

    def ids(self) -> np.ndarray:
        return np.sort(np.concatenate([s.ids() for s in self.shards]))

    def _route(self, ids: np.ndarray) -> list[np.ndarray]:
        """Positions of `ids` that belong to each shard."""
        owner = ids % self.n
        return [np.flatnonzero(owner == i) for i in range(self.n)]

    # ------------------------------------------------------------------ writes

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under new ids (all shards validate first: a bad add changes nothing)."""
        ids = as_ids(ids)
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != ids.size:
            raise InvalidInput(f"vectors must have shape ({ids.size}, {self.dim}) for {ids.size} ids; got {x.shape}")
        parts = [(s, s.check_add(ids[p], x[p])) for s, p in zip(self.shards, self._route(ids))]
        for shard, checked in parts:
            shard.insert_checked(*checked)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(as_ids(ids))
        return sum(s.remove(ids[p]) for s, p in zip(self.shards, self._route(ids)))

    def compact(self) -> None:
        for s in self.shards:
            s.compact()

    # ------------------------------------------------------------------ search

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query over every shard, searched in parallel (higher score = better; -1 ids pad)."""
        if allowed is not None:
            allowed = as_ids(allowed, "allowed")
            mine = [allowed[p] for p in self._route(allowed)]
        else:
            mine = [None] * self.n
        if self.count < PARALLEL_MIN:  # handing small searches to threads costs more than it saves
            found = [s.search(queries, k, a) for s, a in zip(self.shards, mine)]
        else:
            pool = _executor()
            threads = max(1, (os.cpu_count() or 1) // self.n)  # the shards are the parallelism: no oversubscription
            futures = [pool.submit(_search_on, s, queries, k, a, threads) for s, a in zip(self.shards, mine)]
            found = [f.result() for f in futures]  # the first shard's InvalidInput (bad k, shape) surfaces here
        scores = np.concatenate([f[0] for f in found], axis=1)  # (Q, N * k)
        labels = np.concatenate([f[1] for f in found], axis=1)
        return merge_topk(scores, labels, int(k))

    # ------------------------------------------------------------------ snapshots

    def to_bytes(self) -> bytes:
        parts = [s.to_bytes() for s in self.shards]
        return frame(_MAGIC, {"format": _FORMAT, "sizes": [len(p) for p in parts]}, b"".join(parts))

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardedDenseIndex:
        head, body = unframe(data, _MAGIC, _FORMAT, "sharded dense")
        if len(body) != sum(head["sizes"]):
            raise ValueError("sharded dense snapshot is truncated or has trailing bytes")
        at = 0
        shards = []
        for size in head["sizes"]:
            shards.append(DenseIndex.from_bytes(bytes(body[at : at + size])))
            at += size
        self = cls.__new__(cls)
        self.shards = shards
        first = shards[0]
        self.dim, self.spec, self.metric = first.dim, first.spec, first.metric
        return self


AnyDense = DenseIndex | ShardedDenseIndex | NoDense


def check_shards(shards: object) -> None:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidInput(f"shards={shards!r} is out of range: use 1..{MAX_SHARDS} (1 = one index)")


def new_dense(dim: int, spec: str, metric: str, shards: int = 1) -> AnyDense:
    """A collection's dense index: a plain DenseIndex for 1 shard, else N of them fanned out; width 0
    (a collection with dense='none') holds nothing."""
    if dim == 0:
        return NoDense()
    return DenseIndex(dim, spec=spec, metric=metric) if shards == 1 else ShardedDenseIndex(dim, spec, metric, shards)


def dense_from_bytes(data: bytes) -> AnyDense:
    """Restore any kind from its snapshot bytes (the magic says which)."""
    if bytes(data[: len(NO_DENSE)]) == NO_DENSE:
        return NoDense.from_bytes(data)
    if bytes(data[: len(_MAGIC)]) == _MAGIC:
        return ShardedDenseIndex.from_bytes(data)
    return DenseIndex.from_bytes(data)
