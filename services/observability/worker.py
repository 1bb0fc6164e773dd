"""A Celery indexing worker's own /metrics (`lodestar worker --metrics-port`): tasks by outcome and
their duration, from Celery's task signals.

With a prefork pool (concurrency > 1) the children count into PROMETHEUS_MULTIPROC_DIR, which
`prepare` sets before prometheus_client is imported, and the parent serves the sum.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

TASK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def prepare(concurrency: int) -> None:
    """Before prometheus_client is imported: a folder for the pool's children to count into."""
    if concurrency > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lodestar-worker-metrics-")


class WorkerMetrics:
    """Counts every task that ends (success, retry, failure) and times it."""

    def __init__(self, host: str, port: int, concurrency: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from lodestar.services.observability.metrics import MetricsServer

        registry = CollectorRegistry()
        if concurrency > 1:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
            own: CollectorRegistry | None = CollectorRegistry()  # children write files; the parent reads them
        else:
            own = registry
        self.tasks = Counter(
            "lodestar_worker_tasks", "indexing tasks that ended, by outcome", ["outcome"], registry=own
        )
        self.seconds = Histogram(
            "lodestar_worker_task_seconds", "indexing task duration", buckets=TASK_BUCKETS, registry=own
        )
        self._started: dict[str, float] = {}
        self.server = MetricsServer(registry, host, port)

    def connect(self) -> None:
        """Listen to Celery's task signals (in this process and the pool's forked children)."""
        from celery.signals import task_postrun, task_prerun

        task_prerun.connect(self._prerun, weak=False)
        task_postrun.connect(self._postrun, weak=False)

    def _prerun(self, task_id: str = "", **_: Any) -> None:
        self._started[task_id] = time.perf_counter()

    def _postrun(self, task_id: str = "", state: str | None = None, **_: Any) -> None:
        start = self._started.pop(task_id, None)
        if start is not None:
            self.seconds.observe(time.perf_counter() - start)
        self.tasks.labels((state or "unknown").lower()).inc()
