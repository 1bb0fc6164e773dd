"""Batch-indexing jobs in a server: submission, dispatch (in-process or to remote workers), commits, control.

Plain Python over the job store and the retrieval engine (no gRPC, no Celery): the IndexService
servicer and the in-process dispatcher call it; with a broker, chunks go out through the remote
dispatcher the server passes in (services/worker.py's CeleryDispatcher). Dispatch is at-least-once
and completion exactly-once: a chunk whose message was lost (broker restart) or whose worker died is
dispatched again after `requeue_after_s`; a chunk already done is skipped; writes are upserts by id.
"""

from __future__ import annotations

import builtins
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lodestar.cancel import Token, running
from lodestar.embedding import Embedder
from lodestar.errors import Cancelled, DeadlineExceeded, InvalidInput, LodestarError
from lodestar.retrieve.jobs.chunks import ChunkWork, Commit, run_chunk, split
from lodestar.retrieve.jobs.records import JobError, JobInfo, check_worker, clip
from lodestar.retrieve.jobs.store import DB_NAME, JobStore

if TYPE_CHECKING:
    from lodestar.retrieve.engine import RetrievalEngine

log = logging.getLogger(__name__)

IN_PROCESS = "in-process"


@dataclass(frozen=True)
class JobsConfig:
    """Where the job store lives and how chunks are dispatched (the server fills it from Settings)."""

    data_dir: Path
    chunk_docs: int = 64  # documents per chunk (one task)
    requeue_after_s: float = 600.0  # a queued chunk not done by then is dispatched again (Celery)
    max_attempts: int = 5  # in-process: dispatches of a failing chunk before it is marked failed
    broker_url: str = ""  # empty: jobs run in this process
    result_backend: str = ""
    visibility_timeout_s: int = 3600


class Dispatcher(Protocol):
    """Sends chunks to whatever runs them; a chunk queued longer than `stale_after_s` is sent again."""

    stale_after_s: float

    def send(self, job_id: str, idxs: list[int]) -> None: ...

    def stop(self, job_id: str) -> None:
        """The job was cancelled: stop a chunk of it that is running here, at its next boundary."""

    def close(self) -> None: ...


def check_staged(staged: Any, c: Commit) -> None:
    """A worker commits the documents FetchChunk gave it (some may come back as errors instead), each
    under its own line: anything else is refused before a document is written."""
    by_line = dict(zip(staged.lines, staged.docs))
    where = f"job {c.job_id} chunk {c.idx}"
    for line, doc in zip(c.lines, c.prepared.docs):
        mine = by_line.get(line)
        if mine is None or (mine.id, mine.text, mine.metadata) != (doc.id, doc.text, doc.metadata):
            raise InvalidInput(
                f"{where}: line {line} ({doc.id[:80]!r}) is not a document this chunk staged "
                "(commit the documents FetchChunk returned, unchanged)"
            )
    for e in c.errors:
        if e.line not in by_line:
            raise InvalidInput(
                f"{where}: error for line {e.line}, which this chunk does not hold (lines {staged.lines[:3]}...)"
            )


class InProcessDispatcher:
    """One background thread runs chunks with this process's embedder (the embedded default). Each
    chunk runs under a cancellation token (lodestar.cancel): cancelling its job or closing the
    dispatcher stops it at its next boundary (between documents, between embedding steps), before
    its commit; the chunk stays queued, and runs again on resume or at the next start."""

    stale_after_s = math.inf  # its queue never loses a chunk while the process lives

    def __init__(self, manager: JobManager, embedder: Embedder) -> None:
        self.manager = manager
        self.embedder = embedder
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._stop = threading.Event()
        self._running: tuple[str, Token] | None = None  # the job of the chunk running now, and its token
        self._running_lock = threading.Lock()
        self.stopped = 0  # chunks stopped part-way (cancelled job, shutdown)
        self._thread = threading.Thread(target=self._loop, name="lodestar-jobs", daemon=True)
        self._thread.start()

    def send(self, job_id: str, idxs: list[int]) -> None:
        for idx in idxs:
            self._queue.put((job_id, idx))

    def _loop(self) -> None:
        while not self._stop.is_set() and (item := self._queue.get()) is not None:
            if self._stop.is_set():  # closing: what is still queued stays 'queued', pending at the next start
                break
            job_id, idx = item
            token = Token()
            with self._running_lock:
                self._running = (job_id, token)
            if self._stop.is_set():  # close() came between the two checks: it saw no token to cancel
                token.cancel("the server is shutting down")
            try:
                with running(token):
                    run_chunk(self.manager, self.embedder, job_id, idx, IN_PROCESS)
            except (Cancelled, DeadlineExceeded) as exc:
                self.stopped += 1
                log.info("job %s chunk %d stopped before its commit: %s", job_id, idx, exc)
            except Exception as exc:
                try:
                    self.manager.chunk_failed(job_id, idx, exc, IN_PROCESS)
                except Exception:  # the thread must outlive one bad chunk: the others still need it
                    log.exception("job %s chunk %d: recording its failure failed", job_id, idx)
            finally:
                with self._running_lock:
                    self._running = None

    def _cancel_running(self, job_id: str | None, reason: str) -> None:
        with self._running_lock:
            if self._running is not None and job_id in (None, self._running[0]):
                self._running[1].cancel(reason)

    def stop(self, job_id: str) -> None:
        self._cancel_running(job_id, f"job {job_id} was cancelled")

    def close(self) -> None:
        """Stop the chunk now running at its next boundary (not after the whole queue), before the store closes."""
        self._stop.set()
        self._cancel_running(None, "the server is shutting down")
        self._queue.put(None)
        self._thread.join(timeout=30)


class JobManager:
    """The jobs of one server: staged in the job store, chunks dispatched, commits written to `retrieval`.
    With `config.broker_url` chunks go to `remote(config)` (the transport's dispatcher, e.g. Celery);
    without, this process runs them with `embedder`."""

    def __init__(
        self,
        retrieval: RetrievalEngine,
        embedder: Embedder,
        config: JobsConfig,
        remote: Callable[[JobsConfig], Dispatcher] | None = None,
    ) -> None:
        if config.broker_url and remote is None:
            raise ValueError(
                "jobs with a broker_url need a remote dispatcher (the server passes services.worker.CeleryDispatcher)"
            )
        self.retrieval = retrieval
        self.config = config
        self.store = JobStore(Path(config.data_dir) / DB_NAME, retrieval.limits)
        self._dispatch_lock = threading.Lock()
        if dropped := self.store.discard_orphans():  # no upload of this process has begun yet
            log.warning("dropped %d job(s) whose upload was cut off when the previous process ended", dropped)
        if config.broker_url:
            assert remote is not None  # checked first
            self.dispatcher: Dispatcher = remote(config)
        else:
            self.store.requeue_all()  # what a previous process had queued died with it
            self.dispatcher = InProcessDispatcher(self, embedder)
        self.dispatch_due()  # jobs left running by a previous process go on

    @property
    def mode(self) -> str:
        return "celery" if self.config.broker_url else IN_PROCESS

    # --- submission ----------------------------------------------------------------------------

    def open(self, collection: str, source: str, chunk_docs: int = 0) -> str:
        self.retrieval.target(collection)  # NotFound / not serving: refuse before the upload
        limit = self.retrieval.max_docs_per_upsert
        n = chunk_docs or self.config.chunk_docs
        if not 1 <= n <= limit:
            raise InvalidInput(f"chunk_docs must be in 1..{limit} (max_docs_per_upsert); got {n}")
        return self.store.create(collection, source or "-", n)

    def stage(self, job_id: str, lines: Iterable[tuple[int, bytes]]) -> None:
        self.store.stage(job_id, lines)

    def seal(self, job_id: str) -> JobInfo:
        info = self.store.seal(job_id)
        self.dispatch_due(job_id)
        return self.store.get(job_id) if info.chunks else info

    def discard(self, job_id: str) -> None:
        self.store.discard(job_id)

    # --- dispatch ------------------------------------------------------------------------------

    def dispatch_due(self, job_id: str | None = None) -> int:
        """Dispatch pending chunks (and stale queued ones); -> how many were sent."""
        sent = 0
        with self._dispatch_lock:
            for jid, idxs in self.store.due(self.dispatcher.stale_after_s, job_id).items():
                self.store.mark_queued(jid, idxs)
                try:
                    self.dispatcher.send(jid, idxs)
                    sent += len(idxs)
                except Exception as exc:  # broker down: they stay pending for the next round
                    log.warning("dispatching %d chunk(s) of job %s failed (%s); retrying later", len(idxs), jid, exc)
                    self.store.mark_pending(jid, idxs)
        return sent

    # --- the ChunkSource side (in-process runs, and the worker RPCs) ----------------------------

    def fetch(self, job_id: str, idx: int) -> ChunkWork:
        staged = self.store.chunk(job_id, idx)
        if staged.job_state != "running":
            return ChunkWork(job_id, idx, skip=f"job is {staged.job_state}")
        if staged.state == "done":
            return ChunkWork(job_id, idx, skip="chunk already done")
        config, dim, model = self.retrieval.target(staged.collection)
        return ChunkWork(job_id, idx, staged.collection, config, dim, model, staged.docs, staged.lines)

    def commit(self, c: Commit) -> None:
        """Write a prepared chunk and record it done; a document the collection refuses is
        isolated (written one by one) and reported with its line."""
        check_worker(c.worker)
        staged = self.store.chunk(c.job_id, c.idx)
        if staged.job_state != "running" or staged.state == "done":
            return  # cancelled meanwhile, or a duplicate delivery: nothing to record
        check_staged(staged, c)
        errors = [JobError(e.line, e.doc_id, clip(e.message)) for e in c.errors]
        written = 0
        if c.prepared.docs:
            try:
                written = self.retrieval.upsert_prepared(staged.collection, c.prepared, c.model)[0]
            except InvalidInput:
                for line, one in zip(c.lines, split(c.prepared)):
                    try:
                        written += self.retrieval.upsert_prepared(staged.collection, one, c.model)[0]
                    except InvalidInput as exc:
                        errors.append(JobError(line, one.docs[0].id, str(exc)))
        self.store.complete(c.job_id, c.idx, written, errors, c.worker)

    def chunk_failed(self, job_id: str, idx: int, exc: BaseException | str, worker: str, final: bool = False) -> None:
        """A run of a chunk raised: retried by a later dispatch round, failed for good after max_attempts."""
        check_worker(worker)
        message = clip(str(exc) if isinstance(exc, (str, LodestarError)) else f"{type(exc).__name__}: {exc}")
        staged = self.store.chunk(job_id, idx)
        attempts = self.store.attempts(job_id, idx)
        if final or attempts >= self.config.max_attempts:
            log.error("job %s chunk %d failed for good after %d attempt(s): %s", job_id, idx, attempts, message)
            self.store.fail_chunk(job_id, idx, message, worker)
        elif staged.state != "done":
            log.warning("job %s chunk %d failed (attempt %d): %s", job_id, idx, attempts, message)
            self.store.mark_pending(job_id, [idx])

    # --- control -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo:
        return self.store.get(job_id)

    def list(self, limit: int = 100) -> list[JobInfo]:
        return self.store.list(limit)

    def errors(self, job_id: str, limit: int = 1000) -> builtins.list[JobError]:
        return self.store.errors(job_id, limit)

    def cancel(self, job_id: str) -> JobInfo:
        info = self.store.cancel(job_id)
        self.dispatcher.stop(job_id)  # after the store says cancelled: a chunk starting now is skipped
        return info

    def resume(self, job_id: str) -> JobInfo:
        job = self.store.get(job_id)
        if job.state != "done":
            self.retrieval.target(job.collection)  # NOT_FOUND now, not a job that fails after its retries
        info = self.store.resume(job_id)
        self.dispatch_due(job_id)
        return self.store.get(job_id) if info.chunks else info

    def close(self) -> None:
        self.dispatcher.close()
        self.store.close()
