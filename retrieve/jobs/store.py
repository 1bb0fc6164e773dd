"""Batch-indexing jobs, recorded in SQLite (not only in the broker, which may lose messages).

A job is a file's documents staged here, split into chunks of `chunk_docs`; each chunk is embedded
by a worker and written to the collection. Everything a job needs to finish lives in this
database, so it can be resumed after every worker and the broker itself were restarted.

Tables (one database, `jobs.sqlite3`, WAL, synchronous=FULL):
    jobs        one row per job: collection, source, state, counts, timestamps, message
    job_chunks  (job, idx): state pending|queued|done|failed, attempts, when queued, by which worker
    job_docs    the staged documents: (job, chunk, line, id, text, metadata); purged when the job ends
    job_errors  (job, line, id, message): documents that were not written, and why

Job states: staging (upload in progress) -> running -> done | failed; cancelled (and resumed).
A job still staging when its server process ended lost its upload stream: it is dropped at the next start.
A chunk completes once: a redelivered or re-dispatched chunk finds it done and is skipped, and
writing is an upsert by id, so even a chunk run twice writes nothing twice.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lodestar.errors import InvalidInput, NotFound
from lodestar.retrieve.jobs.records import (
    MAX_MESSAGE_CHARS,
    JobError,
    JobInfo,
    StagedChunk,
    check_line,
    parse_line,
)
from lodestar.retrieve.prepare import DocLimits
from lodestar.retrieve.types import Document

DB_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    chunk_docs INTEGER NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    documents INTEGER NOT NULL DEFAULT 0,
    written INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    docs INTEGER NOT NULL,
    written INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at REAL,
    done_at REAL,
    worker TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS job_docs (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    line INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (job_id, doc_id)
);
CREATE INDEX IF NOT EXISTS job_docs_by_chunk ON job_docs(job_id, chunk, line);
CREATE TABLE IF NOT EXISTS job_errors (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    line INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_errors_by_job ON job_errors(job_id, line);
"""


class JobStore:
    """Thread-safe: one connection, writes serialised by a lock (job bookkeeping is light)."""

    def __init__(self, path: Path, limits: DocLimits | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.limits = limits or DocLimits()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- submission ----------------------------------------------------------------------------

    def create(self, collection: str, source: str, chunk_docs: int) -> str:
        if chunk_docs < 1:
            raise InvalidInput(f"chunk_docs must be >= 1; got {chunk_docs}")
        job_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, collection, source, state, chunk_docs, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, collection, source, "staging", chunk_docs, now, now),
            )
        return job_id

    def stage(self, job_id: str, lines: Iterable[tuple[int, bytes]]) -> None:
        """Parse, validate and stage input lines; bad ones (and repeated ids) go to the error list."""
        with self._tx() as db:
            row = db.execute("SELECT state, chunk_docs, documents, lines FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != "staging":
                raise InvalidInput(f"job {job_id} is not accepting documents (state {row[0] if row else 'missing'})")
            _, chunk_docs, documents, last_line = row
            for number, data in lines:
                check_line(number, "line number")
                last_line = max(last_line, number)
                parsed = parse_line(number, data, self.limits)
                if parsed is None:
                    continue
                if isinstance(parsed, JobError):
                    db.execute(
                        "INSERT INTO job_errors VALUES (?,?,?,?)", (job_id, parsed.line, parsed.doc_id, parsed.message)
                    )
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO job_docs VALUES (?,?,?,?,?,?)",
                    (
                        job_id,
                        documents // chunk_docs,
                        number,
                        parsed.id,
                        parsed.text,
                        json.dumps(parsed.metadata, ensure_ascii=False, separators=(",", ":")),
                    ),
                )
                if cur.rowcount == 0:
                    first = db.execute(
                        "SELECT line FROM job_docs WHERE job_id = ? AND doc_id = ?", (job_id, parsed.id)
                    ).fetchone()[0]
                    db.execute(
                        "INSERT INTO job_errors VALUES (?,?,?,?)",
                        (
                            job_id,
                            number,
                            parsed.id,
                            f"line {number} (id {parsed.id[:80]!r}): id repeats line {first}; the first one is indexed",
                        ),
                    )
                    continue
                documents += 1
            db.execute(
                "UPDATE jobs SET documents = ?, lines = ?, updated_at = ? WHERE id = ?",
                (documents, last_line, time.time(), job_id),
            )

    def seal(self, job_id: str) -> JobInfo:
        """End the upload: chunks are created pending and the job runs (done at once when empty)."""
        with self._tx() as db:
            state = self._state(db, job_id)
            if state != "staging":
                raise InvalidInput(f"job {job_id} is already {state}")
            db.execute(
                "INSERT INTO job_chunks (job_id, idx, state, docs) "
                "SELECT job_id, chunk, 'pending', COUNT(*) FROM job_docs WHERE job_id = ? GROUP BY chunk",
                (job_id,),
            )
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (time.time(), job_id))
            self._maybe_finish(db, job_id)
        return self.get(job_id)

    def discard(self, job_id: str) -> None:
        """Drop a job whose upload broke off: nothing of it was dispatched."""
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND state = 'staging'", (job_id,))

    def discard_orphans(self) -> int:
        """At start-up: uploads a previous process was receiving ended with it (their stream is
        gone); -> how many were dropped."""
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE state = 'staging'").rowcount

    # --- chunks --------------------------------------------------------------------------------

    def chunk(self, job_id: str, idx: int) -> StagedChunk:
        with self._lock:
            job = self._db.execute("SELECT collection, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            row = self._db.execute(
                "SELECT state FROM job_chunks WHERE job_id = ? AND idx = ?", (job_id, idx)
            ).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} has no chunk {idx}")
            docs, lines = [], []
            if row[0] != "done" and job[1] == "running":
                for line, doc_id, text, meta in self._db.execute(
                    "SELECT line, doc_id, text, metadata FROM job_docs WHERE job_id = ? AND chunk = ? ORDER BY line",
                    (job_id, idx),
                ):
                    docs.append(Document(doc_id, text, json.loads(meta)))
                    lines.append(line)
        return StagedChunk(job_id, idx, job[0], row[0], job[1], docs, lines)

    def mark_queued(self, job_id: str, idxs: list[int]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE job_chunks SET state = 'queued', queued_at = ?, attempts = attempts + 1 "
                "WHERE job_id = ? AND idx = ? AND state IN ('pending', 'queued')",
                [(now, job_id, i) for i in idxs],
            )

    def mark_pending(self, job_id: str, idxs: list[int]) -> None:
        """Dispatch failed (broker down): the chunks wait for the next dispatch round."""
        with self._tx() as db:
            db.executemany(
                "UPDATE job_chunks SET state = 'pending' WHERE job_id = ? AND idx = ? AND state = 'queued'",
                [(job_id, i) for i in idxs],
            )

    def due(self, stale_after_s: float, job_id: str | None = None) -> dict[str, list[int]]:
        """Chunks of running jobs to dispatch: pending ones, and queued ones older than
        `stale_after_s` (their message was lost with a broker, or their worker died)."""
        cutoff = time.time() - stale_after_s
        sql = (
            "SELECT c.job_id, c.idx FROM job_chunks c JOIN jobs j ON j.id = c.job_id WHERE j.state = 'running' "
            "AND (c.state = 'pending' OR (c.state = 'queued' AND c.queued_at < ?))"
        )
        args: list[object] = [cutoff]
        if job_id is not None:
            sql += " AND c.job_id = ?"
            args.append(job_id)
        out: dict[str, list[int]] = {}
        with self._lock:
            for jid, idx in self._db.execute(sql + " ORDER BY j.created_at, c.idx", args):
                out.setdefault(jid, []).append(idx)
        return out

    def complete(self, job_id: str, idx: int, written: int, errors: list[JobError], worker: str) -> bool:
        """Record a chunk as done (its documents were written); False when it already was (a
        redelivered chunk): then nothing is counted twice."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM job_chunks WHERE job_id = ? AND idx = ?", (job_id, idx)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} has no chunk {idx}")
            if row[0] == "done":
                return False
            now = time.time()
            db.execute(
                "UPDATE job_chunks SET state = 'done', written = ?, done_at = ?, worker = ? WHERE job_id = ? AND idx = ?",
                (written, now, worker, job_id, idx),
            )
            db.executemany(
                "INSERT INTO job_errors VALUES (?,?,?,?)", [(job_id, e.line, e.doc_id, e.message) for e in errors]
            )
            db.execute("UPDATE jobs SET written = written + ?, updated_at = ? WHERE id = ?", (written, now, job_id))
            self._maybe_finish(db, job_id)
        return True

    def fail_chunk(self, job_id: str, idx: int, message: str, worker: str = "") -> None:
        """A chunk that kept failing after its retries: the job goes on, and ends 'failed'."""
        with self._tx() as db:
            db.execute(
                "UPDATE job_chunks SET state = 'failed', message = ?, worker = ? WHERE job_id = ? AND idx = ? AND state != 'done'",
                (message[:MAX_MESSAGE_CHARS], worker, job_id, idx),
            )
            db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time(), job_id))
            self._maybe_finish(db, job_id)

    def _maybe_finish(self, db: sqlite3.Connection, job_id: str) -> None:
        open_, failed = db.execute(
            "SELECT SUM(state IN ('pending', 'queued')), SUM(state = 'failed') FROM job_chunks WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if open_:
            return
        state = "failed" if failed else "done"
        message = f"{failed} chunk(s) failed; `lodestar jobs resume` retries them" if failed else ""
        db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, message = ? WHERE id = ? AND state = 'running'",
            (state, time.time(), time.time(), message, job_id),
        )
        if state == "done":  # the staged copy is no longer needed
            db.execute("DELETE FROM job_docs WHERE job_id = ?", (job_id,))

    # --- control -------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobInfo:
        with self._tx() as db:
            state = self._state(db, job_id)
            if state in ("staging", "running"):
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ?, message = ? WHERE id = ?",
                    (time.time(), time.time(), "cancelled; `lodestar jobs resume` continues it", job_id),
                )
        return self.get(job_id)

    def resume(self, job_id: str) -> JobInfo:
        """Run a cancelled, failed or stalled job again: every chunk not done goes back to pending,
        with its retries counted afresh."""
        with self._tx() as db:
            state = self._state(db, job_id)
            if state == "staging":
                raise InvalidInput(f"job {job_id} is still being uploaded")
            if state != "done":
                db.execute(
                    "UPDATE job_chunks SET state = 'pending', message = '', attempts = 0 WHERE job_id = ? AND state != 'done'",
                    (job_id,),
                )
                db.execute(
                    "UPDATE jobs SET state = 'running', finished_at = NULL, message = '', updated_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                self._maybe_finish(db, job_id)
        return self.get(job_id)

    def attempts(self, job_id: str, idx: int) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM job_chunks WHERE job_id = ? AND idx = ?", (job_id, idx)
            ).fetchone()
        return int(row[0]) if row else 0

    def requeue_all(self) -> None:
        """At start-up: chunks queued by a previous process are pending again."""
        with self._tx() as db:
            db.execute("UPDATE job_chunks SET state = 'pending' WHERE state = 'queued'")

    # --- reading -------------------------------------------------------------------------------

    def _state(self, db: sqlite3.Connection, job_id: str) -> str:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r} (`lodestar jobs` lists them)")
        return str(row[0])

    def get(self, job_id: str) -> JobInfo:
        with self._lock:
            row = self._db.execute(
                "SELECT id, collection, source, state, lines, documents, written, created_at, updated_at, finished_at, message "
                "FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r} (`lodestar jobs` lists them)")
            chunks, done, failed, processed = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(state = 'failed'), 0), "
                "COALESCE(SUM(CASE WHEN state IN ('done', 'failed') THEN docs ELSE 0 END), 0) FROM job_chunks WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            errors = self._db.execute("SELECT COUNT(*) FROM job_errors WHERE job_id = ?", (job_id,)).fetchone()[0]
            workers = dict(
                self._db.execute(
                    "SELECT worker, COUNT(*) FROM job_chunks WHERE job_id = ? AND state = 'done' GROUP BY worker",
                    (job_id,),
                ).fetchall()
            )
        jid, collection, source, state, lines, documents, written, created, updated, finished, message = row
        return JobInfo(
            jid,
            collection,
            source,
            state,
            lines,
            documents,
            chunks,
            done,
            failed,
            written,
            errors,
            created,
            updated,
            finished,
            message,
            workers,
            processed,
        )

    def counts(self) -> tuple[dict[str, int], int]:
        """(chunks by state over every job, documents written by every job): what metrics report."""
        with self._lock:
            states = dict(self._db.execute("SELECT state, COUNT(*) FROM job_chunks GROUP BY state").fetchall())
            written = self._db.execute("SELECT COALESCE(SUM(written), 0) FROM jobs").fetchone()[0]
        return states, int(written)

    def list(self, limit: int = 100) -> list[JobInfo]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))]
        return [self.get(i) for i in ids]

    def errors(self, job_id: str, limit: int = 1000) -> builtins.list[JobError]:
        with self._lock:
            self._state(self._db, job_id)
            rows = self._db.execute(
                "SELECT line, doc_id, message FROM job_errors WHERE job_id = ? ORDER BY line LIMIT ?", (job_id, limit)
            ).fetchall()
        return [JobError(*r) for r in rows]
