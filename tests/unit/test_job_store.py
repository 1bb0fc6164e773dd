"""The job store and the in-process job manager with a tiny real model: parsing and validation by
line, chunking, exactly-once completion, re-dispatch of stale chunks, cancel/resume, and the
isolation of a document the collection refuses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from lodestar.errors import InvalidInput, NotFound
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.jobs import (
    Commit,
    JobError,
    JobManager,
    JobsConfig,
    JobStore,
    merge,
    parse_line,
    prepare_each,
    run_chunk,
)
from lodestar.retrieve.prepare import DocLimits, Prepared, prepare
from lodestar.retrieve.types import CollectionConfig, Document


def lines(n: int, prefix: str = "d") -> list[tuple[int, bytes]]:
    return [(i + 1, json.dumps({"id": f"{prefix}{i}", "text": f"text {i}"}).encode()) for i in range(n)]


def test_parse_line_cases() -> None:
    limits = DocLimits(max_id_bytes=8, max_text_chars=20)
    doc = parse_line(1, b'{"_id": 7, "title": "T", "text": "body", "year": 2020}', limits)
    assert isinstance(doc, Document) and doc.id == "7" and doc.text == "T. body" and doc.metadata == {"year": 2020}
    assert parse_line(2, b"   ", limits) is None
    cases = {
        b"\xc3\x28": "not valid UTF-8",
        b"{oops": "not valid JSON",
        b"[1]": "a JSON object is expected",
        b'{"text": "x"}': "id is empty",
        b'{"id": "a", "text": ""}': "text is empty",
        b'{"id": "a", "text": 5}': "must be strings",
        b'{"id": "123456789", "text": "x"}': "max_id_bytes=8",
        json.dumps({"id": "a", "text": "x" * 21}).encode(): "max_text_chars=20",
        b'{"id": "a", "text": "x", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}": "nested too deeply",  # RecursionError
        b'{"id": "a", "text": "x", "m": ' + b"[" * 100 + b"]" * 100 + b"}": "nested too deeply: the limit is 64",
    }
    for data, words in cases.items():
        err = parse_line(9, data, limits)
        assert isinstance(err, JobError) and err.line == 9 and words in err.message, (data, err)


def test_stage_seal_complete_exactly_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.create("c", "file.jsonl", chunk_docs=4)
    store.stage(job, lines(6))
    store.stage(job, [(7, json.dumps({"id": "d1", "text": "again"}).encode()), (8, b"bad")] + lines(3, "e")[:1])
    info = store.seal(job)
    assert info.state == "running" and info.documents == 7 and info.chunks == 2 and info.errors == 2
    assert [e.line for e in store.errors(job)] == [7, 8] and "id repeats line 2" in store.errors(job)[0].message
    chunk0 = store.chunk(job, 0)
    assert [d.id for d in chunk0.docs] == ["d0", "d1", "d2", "d3"] and chunk0.lines == [1, 2, 3, 4]
    assert store.due(60.0) == {job: [0, 1]}
    store.mark_queued(job, [0, 1])
    assert store.due(60.0) == {} and store.due(-1.0) == {job: [0, 1]}  # stale after the cut-off
    assert store.complete(job, 0, 4, [], "w1") is True
    assert store.complete(job, 0, 4, [], "w2") is False  # a redelivery counts nothing twice
    assert store.get(job).written == 4 and store.get(job).workers == {"w1": 1}
    store.complete(job, 1, 2, [JobError(9, "e0", "line 9: nope")], "w2")
    done = store.get(job)
    assert done.state == "done" and done.written == 6 and done.processed == 7 and done.errors == 3
    assert store.chunk(job, 1).docs == []  # staged copies are purged once the job is done
    with pytest.raises(NotFound):
        store.get("missing")


def test_cancel_resume_fail_and_discard(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.create("c", "-", chunk_docs=2)
    store.stage(job, lines(4))
    store.seal(job)
    assert store.cancel(job).state == "cancelled" and store.due(60.0) == {}
    assert store.chunk(job, 0).job_state == "cancelled"
    assert store.resume(job).state == "running" and store.due(60.0) == {job: [0, 1]}
    store.fail_chunk(job, 0, "boom")
    store.complete(job, 1, 2, [], "w")
    failed = store.get(job)
    assert failed.state == "failed" and failed.chunks_failed == 1 and "resume" in failed.message
    assert store.resume(job).state == "running" and store.due(60.0) == {job: [0]}
    staging = store.create("c", "-", chunk_docs=2)
    store.discard(staging)
    with pytest.raises(NotFound):
        store.get(staging)
    with pytest.raises(InvalidInput):
        store.create("c", "-", chunk_docs=0)


def test_line_numbers_sqlite_cannot_hold_are_refused(tmp_path: Path) -> None:
    """Line numbers are uint64 on the wire but INTEGER (int64) in the job store: a larger one used to
    reach SQLite and come back as INTERNAL (SubmitJob) or fail every commit of a chunk (CommitChunk)."""
    from lodestar.retrieve.jobs import Commit as CommitT
    from lodestar.services.client.index import commit_request
    from lodestar.services.index import commit_from_pb

    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.create("c", "-", chunk_docs=2)
    with pytest.raises(
        InvalidInput, match=r"line number 9223372036854775808 is out of range: use 0\.\.9223372036854775807"
    ):
        store.stage(job, lines(1) + [(2**63, b'{"id": "x", "text": "y"}')])
    store.stage(job, lines(2))  # the refused batch staged nothing; the job still takes lines
    assert store.seal(job).documents == 2
    doc = Document("a", "hello world")
    good = commit_request(
        CommitT(
            job,
            0,
            Prepared([doc], [[(0, 11)]], np.zeros((1, 4), np.float32)),
            [1],
            [JobError(2, "b", "nope")],
            "w",
            "m",
        )
    )
    assert commit_from_pb(good).errors == [JobError(2, "b", "nope")]
    for field in ("lines", "errors"):
        bad = type(good)()
        bad.CopyFrom(good)
        if field == "lines":
            bad.lines[0] = 2**64 - 1
        else:
            bad.errors[0].line = 2**63
        with pytest.raises(InvalidInput, match=rf"{field}\[0\]\S* \d+ is out of range: use 0\.\.{2**63 - 1}"):
            commit_from_pb(bad)


@pytest.fixture
def manager(tiny_engine, tmp_path: Path):  # type: ignore[no-untyped-def]
    retrieval = RetrievalEngine(tmp_path / "collections", tiny_engine)
    retrieval.create(CollectionConfig(name="docs", mode="mean", chunk_tokens=0))
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=3))
    yield jobs
    jobs.close()
    retrieval.close()


def wait_done(jobs: JobManager, job: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not jobs.get(job).finished and time.monotonic() < deadline:
        time.sleep(0.05)


def test_in_process_job_writes_exactly_the_valid_documents(manager: JobManager) -> None:
    job = manager.open("docs", "mem")
    manager.stage(job, lines(7) + [(8, b'{"id": "x"}')])
    manager.seal(job)
    wait_done(manager, job)
    info = manager.get(job)
    assert info.state == "done" and info.written == 7 and info.errors == 1 and info.workers == {"in-process": 3}
    assert manager.retrieval.stats("docs").documents == 7
    with pytest.raises(NotFound):
        manager.open("nope", "mem")


def test_a_refused_document_is_isolated_and_reported(manager: JobManager, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    job = manager.open("docs", "mem")
    manager.stage(job, lines(3))
    manager.store.seal(job)  # sealed without dispatch: this test commits by hand
    work = manager.fetch(job, 0)
    prepared = prepare(tiny_engine, work.config, work.dim, work.docs)
    prepared.spans[1] = [(0, 10_000)]  # outside the document: the collection refuses this one
    manager.commit(Commit(job, 0, prepared, work.lines, [], "w", work.model))
    info = manager.get(job)
    assert info.state == "done" and info.written == 2 and info.errors == 1
    assert "outside its" in manager.errors(job)[0].message and manager.errors(job)[0].line == 2
    assert run_chunk(manager, tiny_engine, job, 0, "w")["skipped"] == "job is done"


def test_prepare_each_falls_back_to_one_by_one(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    cfg = CollectionConfig(name="x", mode="mean", chunk_tokens=0, adapter="")
    docs = [Document("a", "fine"), Document("b", "also fine")]
    prepared, kept, errors = prepare_each(tiny_engine, cfg, 64, docs, [1, 2])
    assert kept == [1, 2] and not errors and prepared.vectors.shape == (2, 64)
    bad = CollectionConfig(name="x", mode="mean", chunk_tokens=0, adapter="no-such-adapter")
    prepared, kept, errors = prepare_each(tiny_engine, bad, 64, docs, [1, 2])
    assert kept == [] and [e.line for e in errors] == [1, 2] and "no-such-adapter" in errors[0].message
    assert merge([], 64).vectors.shape == (0, 64)
    assert isinstance(merge([Prepared([docs[0]], [[(0, 4)]], np.zeros((1, 64), np.float32))], 64), Prepared)
