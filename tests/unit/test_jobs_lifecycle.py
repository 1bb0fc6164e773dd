"""Job lifecycle in a server process: shutdown of the in-process dispatcher, uploads orphaned by a
crash, and the bounds on what a worker reports (FailChunk/CommitChunk)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.jobs import JobManager, JobsConfig, JobStore
from lodestar.retrieve.jobs import manager as jobs_mod
from lodestar.retrieve.types import CollectionConfig


def lines(n: int, prefix: str = "d") -> list[tuple[int, bytes]]:
    return [(i + 1, json.dumps({"id": f"{prefix}{i}", "text": f"text {i}"}).encode()) for i in range(n)]


@pytest.fixture
def retrieval(tiny_engine, tmp_path: Path):  # type: ignore[no-untyped-def]
    r = RetrievalEngine(tmp_path / "collections", tiny_engine)
    r.create(CollectionConfig(name="docs", mode="mean", chunk_tokens=0))
    yield r
    r.close()


def wait_done(jobs: JobManager, job: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not jobs.get(job).finished and time.monotonic() < deadline:
        time.sleep(0.05)


def test_close_stops_after_the_running_chunk_and_a_restart_finishes_the_job(
    retrieval: RetrievalEngine, tiny_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """close() used to queue its stop signal behind every chunk already queued: shutdown blocked for
    up to 30 s while the thread went on running chunks, then closed the job store under it."""
    real = jobs_mod.run_chunk
    started = threading.Event()

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_mod, "run_chunk", slow)
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=1))
    job = jobs.open("docs", "mem")
    jobs.stage(job, lines(40))
    jobs.seal(job)
    assert started.wait(10)
    t0 = time.monotonic()
    jobs.close()
    assert time.monotonic() - t0 < 5, "close() waited for the whole queue"
    assert not jobs.dispatcher._thread.is_alive()
    monkeypatch.setattr(jobs_mod, "run_chunk", real)
    again = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=1))
    try:
        wait_done(again, job)
        info = again.get(job)
        assert info.state == "done" and info.written == 40 and info.chunks_done == 40
        assert retrieval.stats("docs").documents == 40
    finally:
        again.close()


def test_an_upload_cut_off_by_a_crash_is_discarded_at_the_next_start(
    retrieval: RetrievalEngine, tiny_engine, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The upload stream of a 'staging' job lives only in the process that died: the job used to stay
    'staging' for good (WatchJob polled it forever, ResumeJob said it was still being uploaded)."""
    from lodestar.errors import NotFound
    from lodestar.retrieve.jobs import DB_NAME

    crashed = JobStore(tmp_path / DB_NAME)
    orphan = crashed.create("docs", "mem", 2)
    crashed.stage(orphan, lines(3))
    crashed.close()  # the process dies before the upload ends: no seal, no discard
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=2))
    try:
        with pytest.raises(NotFound):
            jobs.get(orphan)
        live = jobs.open("docs", "mem")  # an upload of this process is left alone
        jobs.stage(live, lines(2))
        assert jobs.seal(live).state in ("running", "done")
        wait_done(jobs, live)
        assert jobs.get(live).written == 2
    finally:
        jobs.close()


def test_worker_names_and_failure_messages_are_bounded(
    retrieval: RetrievalEngine, tiny_engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """A worker's name is kept per chunk and listed in every Job (GetJob, WatchJob, ListJobs): unbounded,
    a few long ones made every later Job message larger than the gRPC limit. A FailChunk message was
    logged whole, however long."""
    import logging

    from lodestar.retrieve.jobs import MAX_MESSAGE_CHARS, MAX_WORKER_CHARS, Commit, JobError
    from lodestar.retrieve.prepare import prepare

    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=1))
    try:
        job = jobs.open("docs", "mem")
        jobs.stage(job, lines(3))
        jobs.store.seal(job)  # sealed without dispatch: this test commits by hand
        work = jobs.fetch(job, 0)
        prepared = prepare(tiny_engine, work.config, work.dim, work.docs)
        long_name = "w" * (MAX_WORKER_CHARS + 1)
        with pytest.raises(
            InvalidInput, match=rf"worker name is {MAX_WORKER_CHARS + 1} characters; the limit is {MAX_WORKER_CHARS}"
        ):
            jobs.commit(Commit(job, 0, prepared, work.lines, [], long_name, work.model))
        assert jobs.get(job).chunks_done == 0 and retrieval.stats("docs").documents == 0  # refused before writing
        with pytest.raises(InvalidInput, match="the limit is"):
            jobs.chunk_failed(job, 1, "boom", long_name, final=True)
        assert jobs.get(job).chunks_failed == 0
        jobs.commit(
            Commit(
                job,
                0,
                prepared,
                work.lines,
                [JobError(work.lines[0], "e", "e" * 100_000)],
                "w" * MAX_WORKER_CHARS,
                work.model,
            )
        )
        assert jobs.get(job).workers == {"w" * MAX_WORKER_CHARS: 1}
        assert len(jobs.errors(job)[0].message) <= MAX_MESSAGE_CHARS
        with caplog.at_level(logging.WARNING, logger="lodestar.retrieve.jobs.manager"):
            jobs.chunk_failed(job, 1, "x" * 1_000_000, "w1", final=True)
        assert jobs.get(job).chunks_failed == 1
        assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < MAX_MESSAGE_CHARS + 200
    finally:
        jobs.close()


def test_resume_counts_retries_afresh_and_refuses_a_dropped_collection(
    retrieval: RetrievalEngine, tiny_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A resumed job's chunks get a fresh set of retries (they used to get one more try), and resuming
    a job whose collection is gone is NOT_FOUND at once instead of a job that fails after its retries."""
    from lodestar.errors import NotFound

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the embedder is down")

    monkeypatch.setattr(jobs_mod, "run_chunk", broken)
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=2, max_attempts=2))
    try:
        job = jobs.open("docs", "mem")
        jobs.stage(job, lines(2))
        jobs.seal(job)
        deadline = time.monotonic() + 60
        while jobs.get(job).state != "failed" and time.monotonic() < deadline:
            jobs.dispatch_due(job)
            time.sleep(0.05)
        assert jobs.get(job).state == "failed" and jobs.store.attempts(job, 0) == 2
        jobs.store.resume(job)
        assert jobs.store.attempts(job, 0) == 0  # a fresh count, not the exhausted one
        jobs.cancel(job)
        retrieval.drop("docs")
        with pytest.raises(NotFound, match="docs"):
            jobs.resume(job)
        assert jobs.get(job).state == "cancelled"
    finally:
        jobs.close()


def test_a_commit_holds_only_the_documents_the_chunk_staged(
    retrieval: RetrievalEngine, tiny_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """CommitChunk is on the public port: a worker (or anyone) could write other ids or texts into the
    collection under a job's chunk. Such a commit is refused and nothing of it is written."""
    from lodestar.retrieve.jobs import Commit, JobError, prepare_each

    monkeypatch.setattr(jobs_mod, "run_chunk", lambda *a, **k: None)  # no in-process run: this test commits by hand
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=2))
    try:
        job = jobs.open("docs", "mem")
        jobs.stage(job, lines(2))
        jobs.seal(job)
        work = jobs.fetch(job, 0)
        prepared, got_lines, errors = prepare_each(tiny_engine, work.config, work.dim, work.docs, work.lines)
        forged = [d for d in prepared.docs]
        forged[1] = type(forged[1])(forged[1].id, "a text nobody staged", forged[1].metadata)
        bad = type(prepared)(forged, prepared.spans, prepared.vectors, prepared.sparse)
        with pytest.raises(InvalidInput, match="line 2 .'d1'. is not a document this chunk staged"):
            jobs.commit(Commit(job, 0, bad, got_lines, errors, "w1", ""))
        with pytest.raises(InvalidInput, match="error for line 99"):
            jobs.commit(Commit(job, 0, prepared, got_lines, [JobError(99, "x", "boom")], "w1", ""))
        assert retrieval.stats("docs").documents == 0 and jobs.get(job).written == 0
        jobs.commit(Commit(job, 0, prepared, got_lines, errors, "w1", ""))  # the staged documents, unchanged
        assert retrieval.stats("docs").documents == 2 and jobs.get(job).state == "done"
    finally:
        jobs.close()


@pytest.fixture
def small_steps(tiny_backbone, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A collection over the real embedder taking 2 texts per request: a chunk embeds in many steps."""
    from lodestar.embed.engine import EmbeddingEngine, EngineConfig

    embedder = EmbeddingEngine(tiny_backbone, EngineConfig(max_texts_per_request=2, max_batch_tokens=64))
    r = RetrievalEngine(tmp_path / "small", embedder)
    r.create(CollectionConfig(name="docs", mode="mean", chunk_tokens=0))
    yield r, embedder
    r.close()
    embedder.close()


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_a_running_chunk_stops_at_its_next_step_and_the_job_resumes(small_steps, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    """CancelJob, or the server shutting down, stopped the job only after the chunk already running
    had embedded all its documents (and, on close, waited up to 30 s for it). Now that chunk stops
    before its next embedding step and commits nothing; resume (or the next start) runs it in full."""
    from tinymodel import counting

    retrieval, embedder = small_steps
    config = JobsConfig(data_dir=tmp_path / "jobs", chunk_docs=40)
    jobs = JobManager(retrieval, embedder, config)
    job = jobs.open("docs", "mem")
    jobs.stage(job, lines(40))
    stop = (lambda: jobs.cancel(job)) if how == "cancel" else jobs.dispatcher.close
    with counting(stop, cancel_at=2) as seen:  # from inside the chunk's 2nd forward (of 20)
        jobs.seal(job)
        jobs.dispatcher._thread.join(30) if how == "close" else wait_stopped(jobs)
    assert seen.total == 2 and seen.after_cancel == 0  # no forward began after the stop
    assert jobs.dispatcher.stopped == 1 and retrieval.stats("docs").documents == 0  # nothing committed
    assert jobs.get(job).state == ("cancelled" if how == "cancel" else "running") and jobs.errors(job) == []
    if how == "cancel":
        jobs.resume(job)
    else:
        jobs.close()
        jobs = JobManager(retrieval, embedder, config)  # the next start picks the job up
    try:
        wait_done(jobs, job)
        info = jobs.get(job)
        assert info.state == "done" and info.written == 40 and jobs.errors(job) == []
        assert retrieval.stats("docs").documents == 40
    finally:
        jobs.close()


def wait_stopped(jobs: JobManager, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not jobs.dispatcher.stopped and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)


def test_a_worker_chunk_stops_at_its_next_step_once_the_job_is_cancelled(small_steps, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A Celery worker's chunk used to embed every document after CancelJob (only its commit was
    refused). Its watcher now asks the server for the job's state while it runs: once cancelled, no
    further forward begins, nothing is committed, and the task ends without a retry."""
    from types import SimpleNamespace

    from tinymodel import counting

    from lodestar.retrieve.jobs import ChunkWork
    from lodestar.retrieve.types import Document
    from lodestar.services import worker

    _, embedder = small_steps
    state = {"job": "running"}
    committed: list = []  # type: ignore[type-arg]

    class Server:  # the worker's client: the chunk's documents, the job's state, the commit
        def fetch_chunk(self, job_id: str, idx: int) -> ChunkWork:
            cfg = CollectionConfig(name="docs", mode="mean", chunk_tokens=0)
            docs = [Document(f"d{i}", f"document number {i}") for i in range(40)]
            return ChunkWork(job_id, idx, "docs", cfg, embedder.backbone.hidden_size, "", docs, list(range(40)))

        def get_job(self, job_id: str, max_errors: int = 0) -> SimpleNamespace:
            return SimpleNamespace(state=state["job"])

        def commit_chunk(self, commit: object) -> None:
            committed.append(commit)

    monkeypatch.setattr(worker._Process, "get", classmethod(lambda cls: (embedder, Server())))
    monkeypatch.setattr(worker, "WATCH_EVERY_S", 0.02)
    seen_cancel = threading.Event()
    real_cancel = worker.Token.cancel

    def cancel(self, reason: str = "") -> None:  # type: ignore[no-untyped-def]
        real_cancel(self, reason)
        seen_cancel.set()

    monkeypatch.setattr(worker.Token, "cancel", cancel)

    def cancel_job() -> None:  # inside the chunk's 2nd forward (of 20): CancelJob, and the watcher sees it
        state["job"] = "cancelled"
        assert seen_cancel.wait(10)

    with counting(cancel_job, cancel_at=2) as seen:
        result = worker.index_chunk("job1", 0)
    assert "cancelled" in result["skipped"] and committed == []
    assert seen.total == 2 and seen.after_cancel == 0
