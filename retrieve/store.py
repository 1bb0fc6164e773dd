"""Durable document store of one collection: one SQLite database (WAL, synchronous=FULL, foreign keys).

The store is the source of truth. The in-memory indexes (FAISS, BM25) and their snapshots are
caches that can always be rebuilt from it without re-embedding, because every chunk's vector is
kept here as a float32 blob.

Tables:
    config   one row: the collection's CollectionConfig as JSON
    meta     key/value: schema_version, store_id (uuid, ties snapshots to this database), dim, model,
             pruned_through (changes up to this seq were deleted after a snapshot covered them)
    docs     id TEXT PRIMARY KEY, text, metadata (JSON object; filters use json_extract on it)
    chunks   chunk_id INTEGER PRIMARY KEY AUTOINCREMENT (the FAISS/BM25 int64 id, never reused),
             doc_id -> docs(id) ON DELETE CASCADE, idx, char_start, char_end, vector BLOB (<f4)
    changes  seq INTEGER PRIMARY KEY AUTOINCREMENT, op 'upsert'|'delete', doc_id,
             chunk_ids (JSON list added), removed_ids (JSON list of chunk ids the change removed)

A write (a whole upsert or delete batch) is one `BEGIN IMMEDIATE ... COMMIT` on the writer
connection; with WAL and synchronous=FULL the commit is on disk when it returns. Callers serialise
writes (the engine's per-collection lock); reads use one connection per thread.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from lodestar.errors import Overloaded
from lodestar.retrieve.filters import CompiledFilter
from lodestar.retrieve.types import Document

DB_NAME = "store.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE config (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE docs (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL CHECK (json_valid(metadata))
);
CREATE TABLE chunks (
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES docs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX chunks_by_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS sparse_chunks (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(chunk_id) ON DELETE CASCADE,
    terms BLOB NOT NULL,
    weights BLOB NOT NULL
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    doc_id TEXT NOT NULL,
    chunk_ids TEXT NOT NULL,
    removed_ids TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The database is missing, unreadable or of another schema (the engine marks the collection)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or quota) is full: SQLite's SQLITE_FULL or ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(where: str, exc: BaseException, what: str) -> Overloaded:
    """The error a full disk becomes (RESOURCE_EXHAUSTED): what did not happen, and what to do."""
    return Overloaded(f"out of disk space writing {where} ({exc}): {what}; free disk space and retry")


@dataclass
class DocWrite:
    """One document ready to be written: its chunks' spans and vectors."""

    id: str
    text: str
    metadata_json: str  # a JSON object, already validated and serialised
    spans: list[tuple[int, int]]  # (char_start, char_end) per chunk
    vectors: np.ndarray  # (C, D) float32, C == len(spans)
    sparse: list[tuple[np.ndarray, np.ndarray]] | None = None  # learned sparse: (term ids, weights) per chunk


@dataclass
class WriteResult:
    """What a committed write changed: the engine applies exactly this to its indexes."""

    seq: int  # the last change seq after the commit
    count: int  # documents written or deleted
    added: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (A,) new chunk ids, batch order
    removed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (R,) chunk ids now gone


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk lives in its document."""

    doc_id: str
    idx: int
    start: int
    end: int


def _ids_param(ids: Sequence[Any]) -> str:
    """A JSON array for `IN (SELECT value FROM json_each(?))` (one parameter whatever the count)."""
    return json.dumps([int(i) if isinstance(i, (int, np.integer)) else i for i in ids])


def _as_ids(values: Sequence[int]) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64).reshape(-1)


class Store:
    """One collection's SQLite database. Writes must be serialised by the caller."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        if not self.path.is_file():
            raise StoreError(f"{self.path} does not exist")
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        try:
            self._writer = self._connect()
            # Stores created before learned-sparse collections lack this table (same schema otherwise).
            self._writer.execute(_SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS sparse_chunks") :].split(";")[0])
            version = self._meta_value(self._writer, "schema_version")
            if version != str(SCHEMA_VERSION):
                raise StoreError(f"{self.path} has schema_version {version!r}; this build reads {SCHEMA_VERSION}")
            row = self._writer.execute("SELECT json FROM config WHERE id = 1").fetchone()
            if row is None:
                raise StoreError(f"{self.path} holds no collection config")
            self.config: dict[str, Any] = json.loads(row[0])
            self.meta: dict[str, str] = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as e:
            raise StoreError(f"{self.path} cannot be read: {e}") from None

    @staticmethod
    def initialise(directory: Path, config: dict[str, Any], meta: dict[str, str]) -> str:
        """Create the database in `directory` (which must not hold one); returns the new store_id."""
        path = Path(directory) / DB_NAME
        if path.exists():
            raise FileExistsError(path)
        store_id = uuid.uuid4().hex
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT INTO config (id, json) VALUES (1, ?)", (json.dumps(config, sort_keys=True),))
            rows = {"schema_version": str(SCHEMA_VERSION), "store_id": store_id, "pruned_through": "0", **meta}
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(rows.items()))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return store_id

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=rw"  # never create an empty database by accident
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise StoreError(f"{self.path}: journal_mode is {mode!r}, expected 'wal'")
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL readers never block the writer)."""
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @staticmethod
    def _meta_value(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Durably set one meta value."""
        self._writer.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        self.meta[key] = value

    def close(self) -> None:
        """Close every connection (checkpointing the WAL when this is the last one)."""
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._writer.close()

    # --- writes (caller holds the collection's write lock) ----------------------------------

    def _failed(self, exc: BaseException, what: str) -> NoReturn:
        """End a failed write transaction and re-raise; a full disk becomes a clear Overloaded.
        SQLite may already have rolled the transaction back itself (SQLITE_FULL, SQLITE_IOERR): a
        second ROLLBACK would then fail and hide the reason."""
        if self._writer.in_transaction:
            self._writer.execute("ROLLBACK")
        if is_disk_full(exc):
            raise disk_full(f"the document store {self.path}", exc, what) from exc
        raise exc

    def last_seq(self) -> int:
        """The seq of the last committed change (0 when none); survives pruning."""
        row = self._writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def write_docs(self, docs: Sequence[DocWrite]) -> WriteResult:
        """Insert or replace `docs` with their chunks and a change row each, in one durable transaction."""
        conn = self._writer
        added: list[int] = []
        removed: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for doc in docs:
                old = [r[0] for r in conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (doc.id,))]
                conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.id,))
                conn.execute(
                    "INSERT INTO docs (id, text, metadata) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata",
                    (doc.id, doc.text, doc.metadata_json),
                )
                vectors = np.ascontiguousarray(doc.vectors, dtype="<f4")  # (C, D)
                new: list[int] = []
                for i, (start, end) in enumerate(doc.spans):
                    cur = conn.execute(
                        "INSERT INTO chunks (doc_id, idx, char_start, char_end, vector) VALUES (?, ?, ?, ?, ?)",
                        (doc.id, i, int(start), int(end), vectors[i].tobytes()),
                    )
                    new.append(int(cur.lastrowid))  # type: ignore[arg-type]
                    if doc.sparse is not None:
                        terms, weights = doc.sparse[i]
                        conn.execute(
                            "INSERT INTO sparse_chunks (chunk_id, terms, weights) VALUES (?, ?, ?)",
                            (
                                new[-1],
                                np.asarray(terms, dtype="<u4").tobytes(),
                                np.asarray(weights, dtype="<f4").tobytes(),
                            ),
                        )
                conn.execute(
                    "INSERT INTO changes (op, doc_id, chunk_ids, removed_ids) VALUES ('upsert', ?, ?, ?)",
                    (doc.id, json.dumps(new), json.dumps(old)),
                )
                added += new
                removed += old
            seq = self.last_seq()
            conn.execute("COMMIT")
        except BaseException as e:
            self._failed(e, "nothing of this write was stored")
        return WriteResult(seq=seq, count=len(docs), added=_as_ids(added), removed=_as_ids(removed))

    def delete_docs(self, ids: Sequence[str]) -> WriteResult:
        """Delete the documents that exist among `ids` (others are ignored), in one durable transaction."""
        conn = self._writer
        removed: list[int] = []
        count = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for doc_id in dict.fromkeys(ids):
                if conn.execute("SELECT 1 FROM docs WHERE id = ?", (doc_id,)).fetchone() is None:
                    continue
                old = [r[0] for r in conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (doc_id,))]
                conn.execute("DELETE FROM docs WHERE id = ?", (doc_id,))  # chunks go by ON DELETE CASCADE
                conn.execute(
                    "INSERT INTO changes (op, doc_id, chunk_ids, removed_ids) VALUES ('delete', ?, '[]', ?)",
                    (doc_id, json.dumps(old)),
                )
                removed += old
                count += 1
            seq = self.last_seq()
            if count:
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except BaseException as e:
            self._failed(e, "nothing was deleted")
        return WriteResult(seq=seq, count=count, removed=_as_ids(removed))

    def prune_changes(self, through: int) -> None:
        """Forget changes up to `through` (a durable snapshot covers them)."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (through,))
            prev = int(self._meta_value(conn, "pruned_through") or 0)
            value = str(max(prev, through))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'pruned_through'", (value,))
            conn.execute("COMMIT")
        except BaseException as e:
            self._failed(e, "the change log was not pruned (the snapshot is written; replay covers the rest)")
        self.meta["pruned_through"] = value

    # --- replay and rebuild -------------------------------------------------------------------

    def pruned_through(self) -> int:
        """Changes with seq <= this are gone from the log."""
        return int(self._meta_value(self._writer, "pruned_through") or 0)

    def touched_since(self, seq: int) -> np.ndarray:
        """(T,) int64 every chunk id added or removed by a change after `seq` (the set replay must redo)."""
        touched: set[int] = set()
        for added, removed in self._writer.execute("SELECT chunk_ids, removed_ids FROM changes WHERE seq > ?", (seq,)):
            touched.update(json.loads(added))
            touched.update(json.loads(removed))
        return np.asarray(sorted(touched), dtype=np.int64)

    def _chunk_payload(self, rows: list[tuple[Any, ...]], dim: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)  # (N,)
        vectors = np.empty((len(rows), dim), dtype=np.float32)  # (N, D)
        texts: list[str] = []
        for j, (_, start, end, blob, text) in enumerate(rows):
            vectors[j] = np.frombuffer(blob, dtype="<f4")
            texts.append(text[start:end])
        return ids, vectors, texts

    def chunks_payload(self, chunk_ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids (N,), vectors (N, D), texts) of those `chunk_ids` that still exist, in id order."""
        rows = self._writer.execute(
            "SELECT c.chunk_id, c.char_start, c.char_end, c.vector, d.text FROM chunks c JOIN docs d ON d.id = c.doc_id "
            "WHERE c.chunk_id IN (SELECT value FROM json_each(?)) ORDER BY c.chunk_id",
            (_ids_param(chunk_ids.tolist()),),
        ).fetchall()
        return self._chunk_payload(rows, dim)

    def chunk_sparse(self, chunk_ids: np.ndarray, reader: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Learned-sparse vectors (term ids, weights) of `chunk_ids`, in that order (empty where none);
        reader: through this thread's read connection (searches), not the writer's (its own writes)."""
        conn = self._reader() if reader else self._writer
        rows = dict(
            (int(r[0]), (r[1], r[2]))
            for r in conn.execute(
                "SELECT chunk_id, terms, weights FROM sparse_chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                (_ids_param(np.asarray(chunk_ids).tolist()),),
            )
        )
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        return [
            (np.frombuffer(rows[i][0], "<u4").astype(np.int64), np.frombuffer(rows[i][1], "<f4").astype(np.float32))
            if i in rows
            else empty
            for i in np.asarray(chunk_ids).tolist()
        ]

    def iter_chunks(self, dim: int, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Every chunk as (ids (N,), vectors (N, D), texts) batches in id order (for rebuilds)."""
        last = -1
        while True:
            rows = self._writer.execute(
                "SELECT c.chunk_id, c.char_start, c.char_end, c.vector, d.text FROM chunks c JOIN docs d ON d.id = c.doc_id "
                "WHERE c.chunk_id > ? ORDER BY c.chunk_id LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield self._chunk_payload(rows, dim)

    # --- reads (any thread) -------------------------------------------------------------------

    def get_docs(self, ids: Sequence[str]) -> list[Document | None]:
        """The documents for `ids` in order; None where absent."""
        rows = self.doc_rows(ids)
        return [Document(id=i, text=rows[i][0], metadata=rows[i][1]) if i in rows else None for i in ids]

    def doc_rows(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """id -> (text, metadata) for the `ids` that exist."""
        if not ids:
            return {}
        rows = self._reader().execute(
            "SELECT id, text, metadata FROM docs WHERE id IN (SELECT value FROM json_each(?))", (_ids_param(list(ids)),)
        )
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    def chunk_refs(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRef]:
        """chunk_id -> where it lives, for the ids that exist."""
        if not len(chunk_ids):
            return {}
        rows = self._reader().execute(
            "SELECT chunk_id, doc_id, idx, char_start, char_end FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
            (_ids_param(list(chunk_ids)),),
        )
        return {int(r[0]): ChunkRef(r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows}

    def allowed_chunk_ids(self, where: CompiledFilter) -> np.ndarray:
        """(A,) int64 ids of the chunks whose documents satisfy `where` (one SQL query)."""
        rows = self._reader().execute(
            f"SELECT c.chunk_id FROM chunks c JOIN docs d ON d.id = c.doc_id WHERE {where.sql}", where.params
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def counts(self) -> tuple[int, int]:
        """(documents, chunks)."""
        row = self._reader().execute("SELECT (SELECT COUNT(*) FROM docs), (SELECT COUNT(*) FROM chunks)").fetchone()
        return int(row[0]), int(row[1])  # one statement: one consistent read

    def disk_bytes(self) -> int:
        """Bytes of the database and its WAL/shared-memory files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                total += p.stat().st_size
        return total
