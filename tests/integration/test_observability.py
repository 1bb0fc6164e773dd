"""Metrics scraped over HTTP after real calls, JSON log lines with the request id, tracing spans of
Answer's stages, on real servers over loopback."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lodestar.embed.v1 import embed_pb2, embed_pb2_grpc
from lodestar.services.client import Client, ClientError
from lodestar.services.observability import tracing
from lodestar.services.observability.context import JsonFormatter, RequestFilter


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_real_calls(tiny_server: Any) -> None:
    srv = tiny_server(metrics_port=0)
    port = srv.edge.metrics.port
    before = scrape(port)
    with Client(srv.address) as c:
        c.embed(["one text", "and another, longer text"])
        c.create_collection("notes", sparse="bm25")
        c.upsert("notes", [{"id": "a", "text": "the cat sat on the mat"}, {"id": "b", "text": "dogs chase cats"}])
        c.search("notes", "cat", k=1, retriever="hybrid")
        c.compress("cat", ["the cat sat on the mat. Dogs bark."], budget_tokens=8)
        list(c.generate_stream("the cat", max_new_tokens=4))
    after = scrape(port)
    embed = {"service": "lodestar.embed.v1.EmbedService", "method": "Embed"}
    assert value(after, "lodestar_rpc_requests_total", **embed, code="OK") == 1
    assert value(after, "lodestar_rpc_duration_seconds_count", **embed) == 1
    assert value(after, "lodestar_rpc_in_flight", **embed) == 0
    assert value(after, "lodestar_embed_batch_texts_count") > value(before, "lodestar_embed_batch_texts_count")
    assert value(after, "lodestar_embed_tokens_total") > 0
    assert value(after, "lodestar_embed_batch_padding_ratio_count") > 0
    assert value(after, "lodestar_retrieve_search_seconds_count", retriever="hybrid") == 1
    assert value(after, "lodestar_retrieve_documents", collection="notes") == 2
    assert value(after, "lodestar_retrieve_chunks", collection="notes") >= 2
    assert value(after, "lodestar_retrieve_collections_not_serving") == 0
    assert value(after, "lodestar_compress_tokens_in_total") > value(after, "lodestar_compress_tokens_out_total") > 0
    assert value(after, "lodestar_generate_tokens_total") == 4
    assert value(after, "lodestar_generate_accepted_tokens_per_forward_count") >= 1
    assert value(after, "lodestar_generate_active") == 0
    assert value(after, "lodestar_embed_queue_texts") == 0
    assert value(after, "lodestar_model_load_seconds") > 0
    assert ("lodestar_jobs_documents_indexed_total", ()) in after


def test_refusals_are_counted_with_their_code(tiny_server: Any, tmp_path: Any) -> None:
    from lodestar.services.tokens import add_token

    add_token(tmp_path / "tokens.json", "reader", "read")
    srv = tiny_server(only=("embed",), metrics_port=0, tokens_file=tmp_path / "tokens.json")
    with Client(srv.address) as c, pytest.raises(ClientError):
        c.info()
    after = scrape(srv.edge.metrics.port)
    labels = {"service": "lodestar.embed.v1.EmbedService", "method": "Info", "code": "UNAUTHENTICATED"}
    assert value(after, "lodestar_rpc_requests_total", **labels) == 1


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Log lines as the server writes them with LODESTAR_LOG_FORMAT=json, captured."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_logs_and_trailers_carry_the_request_id(tiny_server: Any, json_log: io.StringIO) -> None:
    srv = tiny_server(only=("embed",))
    with grpc.insecure_channel(srv.address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        _, call = stub.Embed.with_call(embed_pb2.EmbedRequest(texts=["hi"]), metadata=(("x-request-id", "req-42"),))
        assert ("x-request-id", "req-42") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:  # refused by the engine: its log line carries the id too
            stub.Embed(embed_pb2.EmbedRequest(texts=["hi"], mode="no-such-mode"), metadata=(("x-request-id", "bad-1"),))
        assert ("x-request-id", "bad-1") in err.value.trailing_metadata()
        _, call = stub.Info.with_call(embed_pb2.InfoRequest())
        made = dict(call.trailing_metadata())["x-request-id"]
        assert len(made) == 16  # none sent: one is made
    time.sleep(0.2)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    access = {line["request_id"]: line for line in lines if line["logger"] == "lodestar.access"}
    assert access["req-42"]["code"] == "OK" and access["req-42"]["method"].endswith("/Embed")
    assert access["req-42"]["token"] == "-" and access["req-42"]["peer"].startswith("ipv")
    assert access["bad-1"]["code"] == "INVALID_ARGUMENT"
    assert made in access
    refusal = [line for line in lines if line["logger"] != "lodestar.access" and line.get("request_id") == "bad-1"]
    assert refusal and "no-such-mode" in refusal[0]["message"]


def test_answer_stages_are_spans_under_the_rpc(tiny_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "make_exporter", lambda endpoint: exporter)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    srv = tiny_server(otlp_endpoint="http://collector.invalid:4317")
    with Client(srv.address) as c:
        c.create_collection("kb", sparse="bm25")
        c.upsert("kb", [{"id": "s", "text": "the sky is blue"}, {"id": "g", "text": "grass is green"}])
        list(c.answer_stream("what colour is the sky?", "kb", k=1, max_new_tokens=3))
    srv.edge.tracing.provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    rpc = next(s for name, s in spans.items() if name.endswith("GenerateService/Answer"))
    for stage in ("retrieve", "compress", "generate"):
        span = spans[f"answer.{stage}"]
        assert span.parent is not None and span.parent.span_id == rpc.context.span_id
        assert span.context.trace_id == rpc.context.trace_id


def test_otlp_endpoint_without_the_extra_says_so(
    tiny_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(endpoint: str) -> Any:
        raise ModuleNotFoundError("No module named 'opentelemetry'", name="opentelemetry")

    monkeypatch.setattr(tracing, "Tracing", missing)
    caplog.set_level(logging.WARNING)
    srv = tiny_server(only=("embed",), otlp_endpoint="http://collector:4317")
    assert srv.edge.tracing is None
    assert "pip install 'lodestar[otel]'" in caplog.text
