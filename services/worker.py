"""Celery workers for batch indexing (Redis broker): `lodestar worker` runs one.

The task is thin: it runs `retrieve.jobs.run_chunk` with this process's embedding engine and a
`RemoteSource` that fetches the chunk's documents from the server and commits spans and vectors
back over gRPC. Delivery is at-least-once and safe to repeat (a done chunk is skipped, writes are
upserts by id): tasks are acknowledged late and rejected (redelivered) when their worker dies, and
transient failures retry with exponential backoff and jitter. JSON only: no pickle on the wire.

The app is configured from Settings when a worker or a dispatcher starts, never at import time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task

from lodestar.cancel import Token, running
from lodestar.errors import Cancelled, InvalidInput, NotFound
from lodestar.retrieve.jobs import ChunkWork, Commit, JobsConfig, run_chunk

log = logging.getLogger(__name__)

TASK_NAME = "lodestar.index_chunk"
MAX_RETRIES = 8
WATCH_EVERY_S = 2.0  # how often a running chunk asks the server whether its job was cancelled

app = Celery("lodestar")


def configure(celery: Celery, broker_url: str, result_backend: str = "", visibility_timeout_s: int = 3600) -> Celery:
    celery.conf.update(
        broker_url=broker_url,
        result_backend=result_backend or broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # acknowledged after the chunk is committed, not when received
        task_reject_on_worker_lost=True,  # a killed worker's task goes back to the queue
        worker_prefetch_multiplier=1,  # a worker holds one chunk at a time (the others stay available)
        task_ignore_result=True,  # progress lives in the server's job store
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # ride out a broker restart
        worker_hijack_root_logger=False,
    )
    return celery


def make_app(broker_url: str, result_backend: str = "", visibility_timeout_s: int = 3600) -> Celery:
    """A producer app for the server's dispatcher (it sends tasks by name; no task code needed)."""
    return configure(Celery("lodestar-dispatch"), broker_url, result_backend, visibility_timeout_s)


class CeleryDispatcher:
    """The server's side: one Celery task per chunk (the JobManager's remote dispatcher); workers embed
    and commit through the IndexService."""

    def __init__(self, config: JobsConfig) -> None:
        self.stale_after_s = config.requeue_after_s
        self.app = make_app(config.broker_url, config.result_backend, config.visibility_timeout_s)

    def send(self, job_id: str, idxs: list[int]) -> None:
        """Send one task per chunk; fails fast when the broker is down (the chunks stay pending for the next round)."""
        policy = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}
        for idx in idxs:
            self.app.send_task(TASK_NAME, args=(job_id, idx), retry=True, retry_policy=policy)

    def stop(self, job_id: str) -> None:
        """Nothing to reach: a worker's chunk of a cancelled job is skipped at fetch, stops at its
        next embedding batch once its watcher sees the state (index_chunk), and is not recorded at
        commit."""

    def close(self) -> None:
        self.app.close()


class RemoteSource:
    """The ChunkSource of a worker: the server's IndexService over gRPC."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def fetch(self, job_id: str, idx: int) -> ChunkWork:
        return self._call(self.client.fetch_chunk, job_id, idx)

    def commit(self, commit: Commit) -> None:
        self._call(self.client.commit_chunk, commit)

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        """The server's refusals become the domain errors a task does not retry."""
        from lodestar.services.client import ClientError

        try:
            return fn(*args)
        except ClientError as exc:
            if exc.code == "INVALID_ARGUMENT":
                raise InvalidInput(exc.message) from None
            if exc.code == "NOT_FOUND":
                raise NotFound(exc.message) from None
            raise


class _Process:
    """What one worker process builds once: its settings, embedding engine and server client."""

    lock = threading.Lock()
    settings: Any = None
    embedder: Any = None
    client: Any = None

    @classmethod
    def get(cls) -> tuple[Any, Any]:
        with cls.lock:
            if cls.embedder is None:
                from lodestar.services.client import Client
                from lodestar.services.runtime import Runtime
                from lodestar.services.settings import Settings

                cls.settings = cls.settings or Settings()
                cls.embedder = Runtime(cls.settings, [])._build_engine(None)
                cls.client = Client(cls.settings.server, timeout=600, **cls.settings.client_security(worker=True))
            return cls.embedder, cls.client


class ChunkTask(Task):
    """Reports a chunk that exhausted its retries to the server, which marks it failed."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        try:
            _, client = _Process.get()
            job_id, idx = args[0], args[1]
            client.fail_chunk(job_id, idx, f"{type(exc).__name__}: {exc}", self.request.hostname or "", True)
        except Exception:
            log.exception("could not report the failed chunk %s to the server", args)


@app.task(
    name=TASK_NAME,
    bind=True,
    base=ChunkTask,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(Exception,),
    dont_autoretry_for=(InvalidInput, NotFound),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def index_chunk(self: Task, job_id: str, idx: int) -> dict[str, Any]:
    """Embed and commit chunk `idx` of job `job_id` (see retrieve/jobs/chunks.py); a CancelJob that
    lands meanwhile stops the embedding at its next batch (watch_job), and the chunk is not retried."""
    embedder, client = _Process.get()
    token = Token()
    stop = watch_job(client, job_id, token, WATCH_EVERY_S)
    try:
        with running(token):
            return run_chunk(RemoteSource(client), embedder, job_id, idx, self.request.hostname or "worker")
    except Cancelled as exc:
        log.info("chunk %d of job %s stopped: %s", idx, job_id, exc)
        return {"job": job_id, "chunk": idx, "skipped": str(exc)}
    finally:
        stop.set()


def watch_job(client: Any, job_id: str, token: Token, every_s: float = WATCH_EVERY_S) -> threading.Event:
    """Cancel `token` once the server says job `job_id` was cancelled or failed, asking every
    `every_s` seconds until the returned event is set; a server that does not answer is asked again
    (the chunk's commit will meet the same server)."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            try:
                state = client.get_job(job_id, max_errors=0).state
            except Exception:
                continue
            if state in ("cancelled", "failed"):
                token.cancel(f"job {job_id} was {state} while this chunk ran")
                return

    threading.Thread(target=watch, name="lodestar-job-watch", daemon=True).start()
    return stop


def ping(settings: Any, hostname: str | None = None, timeout_s: float = 5.0) -> tuple[str, bool]:
    """-> (node name, whether it answered): a broker ping to one worker (`hostname` as `lodestar worker
    --hostname` takes it, %h expanded; default celery@ this host's name), the workers' liveness check."""
    from celery.utils.nodenames import default_nodename, host_format

    if not settings.broker_url:
        raise InvalidInput("no broker configured: set LODESTAR_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    name = host_format(default_nodename(hostname))
    celery = make_app(settings.broker_url, settings.result_backend, settings.broker_visibility_timeout_s)
    try:
        replies = celery.control.ping(destination=[name], timeout=timeout_s, limit=1)
    finally:
        celery.close()
    return name, any(name in reply for reply in replies)


def main(settings: Any, extra: list[str] | None = None) -> None:
    """Run a worker in this process (blocks): `lodestar worker`."""
    if not settings.broker_url:
        raise InvalidInput("no broker configured: set LODESTAR_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    configure(app, settings.broker_url, settings.result_backend, settings.broker_visibility_timeout_s)
    _Process.settings = settings
    if settings.worker_metrics_port is not None:
        from lodestar.services.observability import worker as worker_metrics

        worker_metrics.prepare(settings.worker_concurrency)
        worker_metrics.WorkerMetrics(settings.host, settings.worker_metrics_port, settings.worker_concurrency).connect()
    pool = "solo" if settings.worker_concurrency == 1 else "prefork"
    if pool == "solo":
        _Process.get()  # load the model before the worker says it is ready
    else:  # each forked child loads its own (torch does not survive fork with threads started)
        from celery.signals import worker_process_init

        worker_process_init.connect(lambda **_: _Process.get(), weak=False)
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--pool",
            pool,
            "--concurrency",
            str(settings.worker_concurrency),
            "--without-gossip",
            "--without-mingle",
            *(extra or []),
        ]
    )
