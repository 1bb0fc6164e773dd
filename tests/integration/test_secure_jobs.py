"""An indexing job end to end on a locked-down deployment: the server on TLS with tokens, a real Celery
worker process (real Redis) that reaches it over TLS with a `worker` token, and the worker's /metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lodestar.backbone import Backbone
from lodestar.bench.certs import CA
from lodestar.bench.procs import RedisProcess, WorkerProcess
from lodestar.errors import Unavailable
from lodestar.services.client import Client, ClientError
from lodestar.services.server import BackgroundServer
from lodestar.services.settings import Settings
from lodestar.services.tokens import add_token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    try:
        proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield proc
    proc.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_with_a_worker_token_indexes_over_tls(backbone: Backbone, redis: RedisProcess, tmp_path: Path) -> None:
    ca = CA()
    cert, key = ca.issue("lodestar", server=True).write(tmp_path, "server")
    ca_file = ca.write(tmp_path / "ca.crt")
    tokens = tmp_path / "tokens.json"
    app = add_token(tokens, "app", "read,write,admin")
    worker_token = add_token(tokens, "indexer", "worker")
    settings = Settings(
        port=0,
        data_dir=tmp_path / "data",
        broker_url=redis.url,
        job_chunk_docs=4,
        tls_cert=cert,
        tls_key=key,
        tokens_file=tokens,
    )
    metrics_port = _free_port()
    with BackgroundServer(settings, backbone=backbone) as srv:
        worker = WorkerProcess(
            "secure",
            redis.url,
            f"localhost:{srv.port}",
            tmp_path / "worker.log",
            {
                "LODESTAR_TLS_CA": str(ca_file),
                "LODESTAR_WORKER_TOKEN": worker_token,
                "LODESTAR_WORKER_METRICS_PORT": str(metrics_port),
            },
        )
        try:
            worker.wait_ready()
            with Client(srv.address, ca=ca_file, token=app, timeout=300) as c:
                c.create_collection("secure", sparse="bm25")
                lines = [
                    json.dumps({"id": f"d{i}", "text": f"document number {i} about TLS"}).encode() for i in range(10)
                ]
                job = c.submit_job("secure", list(enumerate(lines, 1)), source="test")
                deadline = time.monotonic() + 300
                while not (job := c.get_job(job.id)).finished:
                    assert time.monotonic() < deadline, f"job not done: {job}"
                    time.sleep(0.2)
                assert job.state == "done" and job.written == 10, job
                assert c.stats("secure").documents == 10
                with pytest.raises(ClientError) as denied:  # the app's token cannot act as a worker
                    c.fetch_chunk(job.id, 0)
                assert denied.value.code == "PERMISSION_DENIED" and "'worker'" in denied.value.message
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            assert 'lodestar_worker_tasks_total{outcome="success"} 3.0' in text  # 10 documents, 4 per chunk
            assert "lodestar_worker_task_seconds_count 3.0" in text
            log = (tmp_path / "worker.log").read_text()
            assert worker_token not in log
        finally:
            worker.stop()
