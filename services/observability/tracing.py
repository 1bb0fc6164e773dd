"""OpenTelemetry tracing (the optional `otel` extra), on when LODESTAR_OTLP_ENDPOINT is set.

A span per RPC comes from opentelemetry-instrumentation-grpc's server interceptor; Answer's stages
(retrieve, compress, generate) are child spans opened through the engines' Telemetry hook, so
generate/ never imports OpenTelemetry. The stage spans run on the generation thread, which starts
with the RPC's context (services/streaming.py), so they nest under the RPC's span.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from lodestar.telemetry import NoTelemetry

log = logging.getLogger(__name__)

MISSING_EXTRA = (
    "LODESTAR_OTLP_ENDPOINT is set to %s but OpenTelemetry is not installed (%s): "
    "pip install 'lodestar[otel]'; serving without tracing"
)


def make_exporter(endpoint: str) -> Any:
    """The span exporter for `endpoint` (OTLP over gRPC; http:// means no TLS). Tests replace it."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))


class Tracing(NoTelemetry):
    """The tracer provider, its gRPC server interceptor, and stage spans for the engines."""

    def __init__(self, endpoint: str, service_name: str = "lodestar") -> None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(make_exporter(endpoint)))
        self.tracer = self.provider.get_tracer("lodestar")
        self.interceptor = aio_server_interceptor(tracer_provider=self.provider)

    def stage(self, name: str) -> AbstractContextManager[object]:
        return self.tracer.start_as_current_span(f"answer.{name}")

    def close(self) -> None:
        self.provider.shutdown()  # flushes what is still queued


def start_tracing(endpoint: str) -> Tracing | None:
    """Tracing to `endpoint`, or None when unset or the extra is missing (which the log says)."""
    if not endpoint:
        return None
    try:
        tracing = Tracing(endpoint)
    except ImportError as exc:
        log.warning(MISSING_EXTRA, endpoint, exc.name or exc)
        return None
    log.info("tracing: spans go to %s (OTLP/gRPC)", endpoint)
    return tracing
