"""Prometheus metrics of a serving process, on their own registry and HTTP port (`/metrics`).

Three sources: `RpcMetrics` (the RPC interceptor: requests by service, method and code, latency,
in flight); `EngineMetrics` (the engines' `Telemetry` hook: batch shapes, search latency by
retriever, tokens generated and accepted per verify forward, compression tokens); and
`RuntimeCollector`, which reads engine state when Prometheus scrapes (queue depth, adapters,
collections, active generations, job chunks by state). Labels stay few: service, method, code,
retriever, state, and collection only for the first MAX_COLLECTION_LABELS collections.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lodestar.errors import LodestarError

if TYPE_CHECKING:
    from lodestar.services.runtime import Runtime

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
ACCEPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
MAX_COLLECTION_LABELS = 100  # per-collection series for at most this many collections (by name)


class RpcMetrics:
    """Requests, latency and in-flight calls per RPC; label children cached per method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lodestar_rpc_requests",
            "RPCs finished, by gRPC service, method and status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "lodestar_rpc_duration_seconds",
            "RPC duration (a stream: until its last message)",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("lodestar_rpc_in_flight", "RPCs being handled", ["service", "method"], registry=registry)
        self._children: dict[str, tuple[Any, Any]] = {}
        self._counts: dict[tuple[str, str], Any] = {}

    @staticmethod
    def _labels(method: str) -> tuple[str, str]:
        service, _, name = method.lstrip("/").partition("/")
        return service, name

    def begin(self, method: str) -> None:
        children = self._children.get(method)
        if children is None:
            labels = self._labels(method)
            children = self._children[method] = (self.duration.labels(*labels), self.in_flight.labels(*labels))
        children[1].inc()

    def end(self, method: str, code: str, seconds: float) -> None:
        duration, in_flight = self._children[method]
        in_flight.dec()
        duration.observe(seconds)
        counter = self._counts.get((method, code))
        if counter is None:
            counter = self._counts[(method, code)] = self.requests.labels(*self._labels(method), code)
        counter.inc()


class EngineMetrics:
    """The engines' Telemetry: what they report as it happens (lodestar/telemetry.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.batch_texts = Histogram(
            "lodestar_embed_batch_texts", "texts per embedding forward", buckets=COUNT_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "lodestar_embed_batch_tokens",
            "padded tokens per embedding forward (texts x longest)",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padding = Histogram(
            "lodestar_embed_batch_padding_ratio",
            "share of an embedding forward's tokens that were padding",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.embed_tokens = Counter("lodestar_embed_tokens", "tokens embedded (padding excluded)", registry=r)
        self.search = Histogram(
            "lodestar_retrieve_search_seconds",
            "Search time in the retrieval engine (all of a request's queries), by retriever",
            ["retriever"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("lodestar_generate_tokens", "tokens generated", registry=r)
        self.accepted = Histogram(
            "lodestar_generate_accepted_tokens_per_forward",
            "tokens one verification forward produced (1 = no drafted token accepted)",
            buckets=ACCEPT_BUCKETS,
            registry=r,
        )
        self.compress_in = Counter("lodestar_compress_tokens_in", "passage tokens compressions read", registry=r)
        self.compress_out = Counter("lodestar_compress_tokens_out", "context tokens compressions kept", registry=r)

    def embed_batch(self, texts: int, tokens: int, padded_tokens: int) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(padded_tokens)
        self.batch_padding.observe(1 - tokens / padded_tokens if padded_tokens else 0.0)
        self.embed_tokens.inc(tokens)

    def searched(self, retriever: str, seconds: float) -> None:
        self.search.labels(retriever).observe(seconds)

    def compressed(self, tokens_in: int, tokens_out: int) -> None:
        self.compress_in.inc(tokens_in)
        self.compress_out.inc(tokens_out)

    def generated(self, tokens: int) -> None:
        self.generated_tokens.inc(tokens)

    def verified(self, tokens_per_forward: Sequence[int]) -> None:
        for n in tokens_per_forward:
            self.accepted.observe(n)

    def stage(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()


class RuntimeCollector(Collector):
    """Engine state read at scrape time (nothing is kept between scrapes)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        rt = self.runtime
        load = GaugeMetricFamily("lodestar_model_load_seconds", "seconds the model and engines took to load")
        if rt.load_seconds is not None:
            load.add_metric([], rt.load_seconds)
        yield load
        for part in (self._embed, self._retrieve, self._generate, self._jobs):
            try:
                yield from part()
            except LodestarError:  # not loaded yet, shutting down, or a service this process does not run
                continue
            except Exception:  # a scrape must not fail because one engine could not answer
                log.exception("metrics: %s failed", part.__name__)

    def _embed(self) -> Iterator[Any]:
        engine = self.runtime.embed_engine()
        queue = GaugeMetricFamily("lodestar_embed_queue_texts", "texts waiting in the embedding batcher")
        queue.add_metric([], engine.batcher.queued)
        adapters = GaugeMetricFamily("lodestar_embed_adapters_resident", "LoRA adapters loaded now")
        adapters.add_metric([], len(engine.backbone.adapters.resident()))
        yield from (queue, adapters)

    def _retrieve(self) -> Iterator[Any]:
        if not self.runtime.serves & {"retrieve", "index"}:
            return
        engine = self.runtime.retrieve_engine()
        status = engine.status()
        not_serving = GaugeMetricFamily("lodestar_retrieve_collections_not_serving", "collections that failed to load")
        not_serving.add_metric([], sum(1 for s in status.values() if s != "ok"))
        total = GaugeMetricFamily("lodestar_retrieve_collections", "collections in this process")
        total.add_metric([], len(status))
        docs = GaugeMetricFamily("lodestar_retrieve_documents", "documents per collection", labels=["collection"])
        chunks = GaugeMetricFamily("lodestar_retrieve_chunks", "chunks per collection", labels=["collection"])
        age = GaugeMetricFamily(
            "lodestar_retrieve_snapshot_age_seconds", "time since the last index snapshot", labels=["collection"]
        )
        snapshots = engine.snapshot_times()
        now = time.time()
        for name in sorted(status)[:MAX_COLLECTION_LABELS]:
            if status[name] != "ok":
                continue
            stats = engine.stats(name)
            docs.add_metric([name], stats.documents)
            chunks.add_metric([name], stats.chunks)
            if (taken := snapshots.get(name)) is not None:
                age.add_metric([name], max(0.0, now - taken))
        yield from (not_serving, total, docs, chunks, age)

    def _generate(self) -> Iterator[Any]:
        if "generate" not in self.runtime.serves:
            return
        active = GaugeMetricFamily("lodestar_generate_active", "generations in flight")
        active.add_metric([], self.runtime.generate_engine().in_flight)
        yield active

    def _jobs(self) -> Iterator[Any]:
        if "index" not in self.runtime.serves:
            return
        by_state, written = self.runtime.job_manager().store.counts()
        chunks = GaugeMetricFamily("lodestar_jobs_chunks", "indexing job chunks by state", labels=["state"])
        for state, n in sorted(by_state.items()):
            chunks.add_metric([state], n)
        docs = CounterMetricFamily("lodestar_jobs_documents_indexed", "documents indexing jobs have written")
        docs.add_metric([], written)
        yield from (chunks, docs)


class MetricsServer:
    """The /metrics HTTP endpoint of one registry; `port` is the bound one (0 picks a free port)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self.httpd.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def worker_registry(concurrency: int) -> CollectorRegistry:
    """A worker's registry: forked pool children write to PROMETHEUS_MULTIPROC_DIR, which must be set
    before prometheus_client is first imported (worker.main does so) and is read back here."""
    registry = CollectorRegistry()
    if concurrency > 1 and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    return registry
