"""Batch indexing jobs end to end: real Redis (a private redis-server this test starts and
restarts), real Celery worker processes (`lodestar worker`), a real server with the bundled model.

Every job is checked the same way: it ends `done`, the collection holds exactly the expected ids
(none missing, none duplicated: one chunk per document), and the bad lines are listed by number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lodestar.backbone import Backbone
from lodestar.bench.procs import RedisProcess, WorkerProcess
from lodestar.errors import Unavailable
from lodestar.services.client import Client, ClientError, Job
from lodestar.services.server import BackgroundServer
from lodestar.services.settings import Settings

pytestmark = pytest.mark.slow

REQUEUE_S = 4.0  # a chunk whose message or worker was lost is dispatched again after this
WORDS = "retrieval augmented generation needs fast and durable indexing of many documents".split()


def corpus(n: int, prefix: str) -> list[bytes]:
    """n documents of ~60 words (a chunk takes a noticeable moment to embed) as jsonl lines."""
    out = []
    for i in range(n):
        words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(60))
        out.append(json.dumps({"id": f"{prefix}{i}", "text": f"document {i}: {words}", "n": i}).encode())
    return out


BAD_LINES = [
    b'{"text": "a document without an id"}',
    b'{"id": "empty", "text": "   "}',
    b'\xff\xfe{"id": "latin1"}',
    b'{"id": "broken", "text": ',
    json.dumps({"id": "x" * 600, "text": "an id over max_id_bytes"}).encode(),
]


def numbered(lines: list[bytes]) -> list[tuple[int, bytes]]:
    return list(enumerate(lines, 1))


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    try:
        proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def celery_server(
    backbone: Backbone, redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    settings = Settings(
        port=0,
        data_dir=tmp_path_factory.mktemp("jobs-data"),
        broker_url=redis.url,
        job_chunk_docs=6,
        job_requeue_after_s=REQUEUE_S,
        broker_visibility_timeout_s=30,
    )
    srv = BackgroundServer(settings, backbone=backbone).start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture(scope="module")
def workers(
    celery_server: BackgroundServer, redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    logs = tmp_path_factory.mktemp("worker-logs")
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        w = WorkerProcess(
            name, redis.url, celery_server.address, logs / f"{name}.log", {"LODESTAR_BROKER_VISIBILITY_TIMEOUT_S": "30"}
        )
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def client(celery_server: BackgroundServer) -> Iterator[Client]:  # type: ignore[override]
    with Client(celery_server.address, timeout=300) as c:
        yield c


def collection(client: Client, name: str) -> str:
    client.create_collection(name, mode="mean", sparse="bm25", chunk_tokens=0)
    return name


def wait_for(client: Client, job_id: str, pred: Any, timeout: float = 300) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id, max_errors=1000)
        if pred(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {client.get_job(job_id)}")


def ping(hostname: str, redis: RedisProcess) -> int:
    """`lodestar worker --ping`'s exit status."""
    env = {**os.environ, "LODESTAR_BROKER_URL": redis.url}
    cmd = [sys.executable, "-m", "lodestar.services.cli", "worker", "--ping", "--hostname", hostname]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode


def assert_exact(client: Client, name: str, ids: list[str]) -> None:
    stats = client.stats(name)
    assert stats.documents == len(ids) and stats.chunks == len(ids)  # none missing, none duplicated
    assert all(d is not None for d in client.get(name, ids))


def test_two_workers_with_bad_lines(client: Client, workers: Any, redis: RedisProcess) -> None:
    w1, w2 = workers("w1"), workers("w2")
    w1.wait_ready()
    w2.wait_ready()
    assert ping("w1@%h", redis) == 0 and ping("nobody@%h", redis) == 1  # the chart's worker liveness probe
    name = collection(client, "jobs_two")
    lines = corpus(60, "a") + BAD_LINES
    job = client.submit_job(name, numbered(lines), source="test")
    assert job.state == "running" and job.documents == 60 and job.chunks == 10 and job.mode == "celery"
    done = wait_for(client, job.id, lambda j: j.state == "done")
    assert done.written == 60 and done.chunks_done == 10 and done.processed == 60
    assert {w.split("@")[0] for w in done.workers} == {"w1", "w2"}  # both processes took chunks
    assert [e.line for e in done.errors] == [61, 62, 63, 64, 65]
    assert "id is empty" in done.errors[0].message and "not valid UTF-8" in done.errors[2].message
    assert "max_id_bytes=512" in done.errors[4].message
    assert_exact(client, name, [f"a{i}" for i in range(60)])


def test_a_celery_worker_fills_a_sparse_only_collection(client: Client, workers: Any) -> None:
    """dense='none' travels with the collection's config to the worker, which chunks and sends no vectors."""
    workers("w3").wait_ready()
    client.create_collection("jobs_lex", dense="none", chunk_tokens=0)
    job = client.submit_job("jobs_lex", numbered(corpus(20, "l")), source="test")
    done = wait_for(client, job.id, lambda j: j.state == "done")
    assert done.written == 20 and job.mode == "celery"
    assert_exact(client, "jobs_lex", [f"l{i}" for i in range(20)])
    assert client.stats("jobs_lex").index_vectors == 0
    assert client.search("jobs_lex", "document 7", retriever="sparse", k=1)[0][0].id == "l7"


def test_sigkill_a_worker_and_restart_redis_mid_job(client: Client, workers: Any, redis: RedisProcess) -> None:
    w3, w4 = workers("w3"), workers("w4")
    w3.wait_ready()
    w4.wait_ready()
    name = collection(client, "jobs_chaos")
    job = client.submit_job(name, numbered(corpus(120, "b")))
    wait_for(client, job.id, lambda j: j.chunks_done >= 3)
    w3.kill()  # mid-chunk, most likely: its task is neither acknowledged nor committed
    wait_for(client, job.id, lambda j: j.chunks_done >= 6)
    redis.restart()  # queued messages are gone with it; the server dispatches them again
    done = wait_for(client, job.id, lambda j: j.state == "done")
    assert done.written == 120 and done.chunks_done == 20 and done.errors_count == 0
    assert_exact(client, name, [f"b{i}" for i in range(120)])


def test_cancel_then_resume_after_everything_restarted(client: Client, workers: Any, redis: RedisProcess) -> None:
    w5 = workers("w5")
    w5.wait_ready()
    name = collection(client, "jobs_cancel")
    job = client.submit_job(name, numbered(corpus(90, "c")))
    wait_for(client, job.id, lambda j: j.chunks_done >= 2)
    cancelled = client.cancel_job(job.id)
    assert cancelled.state == "cancelled"
    time.sleep(2.0)  # chunks already queued are skipped by the worker
    settled = client.get_job(job.id)
    assert settled.state == "cancelled" and settled.chunks_done < settled.chunks
    # Every worker and Redis itself go away; the job is only in the server's job store now.
    w5.stop()
    redis.restart()
    w6 = workers("w6")
    w6.wait_ready()
    resumed = client.resume_job(job.id)
    assert resumed.state == "running"
    done = wait_for(client, job.id, lambda j: j.state == "done")
    assert done.written == 90
    assert_exact(client, name, [f"c{i}" for i in range(90)])


def test_job_errors_and_refusals(client: Client) -> None:
    with pytest.raises(ClientError) as err:
        client.submit_job("no_such_collection", numbered(corpus(2, "z")))
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(ClientError) as err:
        client.get_job("nope")
    assert err.value.code == "NOT_FOUND" and "lodestar jobs" in err.value.message
    name = collection(client, "jobs_refuse")
    with pytest.raises(ClientError) as err:
        client.submit_job(name, numbered(corpus(2, "z")), chunk_docs=20000)
    assert err.value.code == "INVALID_ARGUMENT" and "chunk_docs must be in 1..10000" in err.value.message
    assert client.list_jobs(limit=50)  # the earlier jobs are listed
    empty = client.submit_job(name, numbered([b"", b"not json"]))
    assert empty.state == "done" and empty.documents == 0 and empty.errors_count == 1
