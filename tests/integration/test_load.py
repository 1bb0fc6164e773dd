"""Under load and abuse, with real servers on loopback: bad input gets a clear status (never
INTERNAL) with a bounded message, work a caller no longer waits for stops, work past the server's
budget is refused at once with a retry hint, and `lodestar serve` under load exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from lodestar.backbone import Backbone
from lodestar.bench.chaos.server import ServerProcess
from lodestar.embed.v1 import embed_pb2 as epb
from lodestar.embed.v1 import embed_pb2_grpc as epb_grpc
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services.client import Client, ClientError
from lodestar.services.client.channel import ChannelConfig
from lodestar.services.server import JOINED

LONG = "a long query to keep the model busy for a while " * 30


def _stubs(address: str) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(address)
    return channel, rpb_grpc.RetrieveServiceStub(channel), epb_grpc.EmbedServiceStub(channel)


def _status(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Call `call()` expecting an error: -> (code, message, trailing metadata)."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    e = err.value
    return e.code(), e.details(), dict(e.trailing_metadata() or ())


def _collection(retrieve: Any, name: str = "c", docs: int = 3) -> None:
    retrieve.CreateCollection(
        rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name=name, sparse_kind=rpb.SPARSE_KIND_BM25))
    )
    if docs:
        retrieve.Upsert(
            rpb.UpsertRequest(
                collection=name,
                documents=[rpb.Document(id=f"d{i}", text=f"document number {i} about topic {i}") for i in range(docs)],
            )
        )


def test_bad_input_gets_a_clear_bounded_status(tiny_server: Any) -> None:
    srv = tiny_server()
    channel, retrieve, embed = _stubs(srv.address)
    with channel:
        _collection(retrieve, "c")
        _collection(retrieve, "secret-other", docs=0)
        # 995 filters: SQLite refused the expression with INTERNAL
        filters = [rpb.Filter(field=f"f{i}", operator=rpb.FILTER_OP_EQ, value_json="1") for i in range(995)]
        code, msg, _ = _status(
            lambda: retrieve.Search(
                rpb.SearchRequest(collection="c", queries=["q"], options=rpb.SearchOptions(filters=filters))
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_filters_per_search=64" in msg
        # more queries than a Search takes
        code, msg, _ = _status(lambda: retrieve.Search(rpb.SearchRequest(collection="c", queries=["q"] * 1025)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_queries_per_search=1024" in msg
        # a NUL byte in Restore's path was INTERNAL ("embedded null byte")
        code, msg, _ = _status(lambda: retrieve.Restore(rpb.RestoreRequest(collection="c", path="/tmp/a\x00b")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in msg
        # Restore reads only under the data folder by default, and says so before touching the path
        code, msg, _ = _status(lambda: retrieve.Restore(rpb.RestoreRequest(collection="c", path="/etc")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "snapshots are read only from" in msg
        # huge collection names: NOT_FOUND with a short message (was RESOURCE_EXHAUSTED: metadata too big)
        for size in (10_000, 20_000):
            code, msg, _ = _status(lambda size=size: retrieve.Stats(rpb.StatsRequest(collection="n" * size)))
            assert code == grpc.StatusCode.NOT_FOUND and len(msg) < 1000 and f"{size} characters" in msg
        code, msg, _ = _status(lambda: retrieve.Stats(rpb.StatsRequest(collection="missing")))
        assert code == grpc.StatusCode.NOT_FOUND and "secret-other" not in msg  # no enumeration
        # ids with control or bidi characters
        for bad in ("a\x00b", "evil\u202egnp.exe", "line\nbreak"):
            code, msg, _ = _status(
                lambda bad=bad: retrieve.Upsert(
                    rpb.UpsertRequest(collection="c", documents=[rpb.Document(id=bad, text="t")])
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "control character" in msg, bad
            code, msg, _ = _status(lambda bad=bad: retrieve.Delete(rpb.DeleteRequest(collection="c", ids=[bad])))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
        # an unknown truncate number is refused, as an unknown dtype is
        code, msg, _ = _status(lambda: embed.Embed(epb.EmbedRequest(texts=["x"], truncate=7)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "TRUNCATE_END" in msg
        # a huge id echoed in an error is cut
        code, msg, _ = _status(
            lambda: retrieve.Upsert(
                rpb.UpsertRequest(collection="c", documents=[rpb.Document(id="i" * 50_000, text="t")])
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(msg) < 1000


def test_a_search_whose_deadline_passed_stops_embedding_its_queries(tiny_server: Any) -> None:
    srv = tiny_server(max_batch_tokens=1024)  # many small batches: the work has many boundaries
    channel, retrieve, _ = _stubs(srv.address)
    with channel:
        _collection(retrieve, "c")
        batcher = srv.runtime._engine.batcher  # type: ignore[union-attr]
        before = batcher.stats.texts
        code, _, _ = _status(
            lambda: retrieve.Search(rpb.SearchRequest(collection="c", queries=[LONG] * 1024), timeout=0.3)
        )
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the server lets go of the call: its budget and token are released, the batcher goes idle
        end = time.monotonic() + 60
        while time.monotonic() < end and (srv.runtime.budgets["texts"].in_flight or len(srv.runtime.tokens)):
            time.sleep(0.05)
        assert srv.runtime.budgets["texts"].in_flight == 0 and len(srv.runtime.tokens) == 0
        # a forward already running when the call left may still finish (work stops at the next batch
        # boundary): settle once the batcher's count has held still for a second
        settled, still_since = batcher.stats.texts, time.monotonic()
        while time.monotonic() < end and time.monotonic() - still_since < 1.0:
            time.sleep(0.05)
            if batcher.stats.texts != settled:
                settled, still_since = batcher.stats.texts, time.monotonic()
        time.sleep(0.5)
        assert batcher.stats.texts == settled  # nothing more runs for the departed caller
        assert settled - before < 1024  # and not every query was embedded


def test_an_upsert_cancelled_before_its_write_writes_nothing(tiny_server: Any) -> None:
    srv = tiny_server(max_batch_tokens=1024)
    channel, retrieve, _ = _stubs(srv.address)
    with channel:
        _collection(retrieve, "c", docs=0)
        docs = [rpb.Document(id=f"d{i}", text=LONG) for i in range(2000)]
        code, _, _ = _status(lambda: retrieve.Upsert(rpb.UpsertRequest(collection="c", documents=docs), timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        end = time.monotonic() + 60
        while time.monotonic() < end and srv.runtime.budgets["documents"].in_flight:
            time.sleep(0.05)
        assert srv.runtime.budgets["documents"].in_flight == 0
        assert retrieve.Stats(rpb.StatsRequest(collection="c")).documents == 0  # not begun = not written
        # a write that completes is acknowledged and stays
        retrieve.Upsert(rpb.UpsertRequest(collection="c", documents=docs[:3]))
        assert retrieve.Stats(rpb.StatsRequest(collection="c")).documents == 3


def test_work_past_the_budget_is_refused_at_once_with_a_retry_hint(tiny_server: Any) -> None:
    srv = tiny_server(max_queued_texts=64, max_inflight_documents=10)
    channel, retrieve, embed = _stubs(srv.address)
    with channel:
        _collection(retrieve, "c")
        texts = srv.runtime.budgets["texts"]
        with texts.admit(60, None):  # 60 texts in flight, as if other callers sent them
            code, msg, trailers = _status(lambda: embed.Embed(epb.EmbedRequest(texts=["x"] * 8)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_texts=64" in msg
            assert int(trailers["retry-after-ms"]) > 0 and "grpc-retry-pushback-ms" in trailers
            assert trailers.get("x-request-id")
            code, msg, _ = _status(lambda: retrieve.Search(rpb.SearchRequest(collection="c", queries=["q"] * 8)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_texts=64" in msg
            assert embed.Embed(epb.EmbedRequest(texts=["x"] * 4)).embeddings.shape[0] == 4  # what fits runs
            with Client(srv.address, channel=ChannelConfig(retries=0)) as c:  # the client shows the hint
                with pytest.raises(ClientError) as err:
                    c.embed(["x"] * 8)
                assert err.value.code == "RESOURCE_EXHAUSTED" and (err.value.retry_after_ms or 0) > 0
        code, msg, _ = _status(lambda: embed.Embed(epb.EmbedRequest(texts=["x"] * 65)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # never fits: retrying cannot help
        docs = [rpb.Document(id=f"e{i}", text="t") for i in range(11)]
        code, msg, _ = _status(lambda: retrieve.Upsert(rpb.UpsertRequest(collection="c", documents=docs)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_inflight_documents=10" in msg
        # a deadline the queue ahead would outlast is refused instead of queued
        texts.per_unit = 1.0
        with texts.admit(30, None):
            code, msg, _ = _status(lambda: embed.Embed(epb.EmbedRequest(texts=["x"]), timeout=5))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "deadline" in msg


def test_tokens_past_the_budget_are_refused_at_once_with_a_retry_hint(tiny_server: Any) -> None:
    """max_queued_tokens: the same refusal as for texts, counted in (estimated) tokens: 8 texts of
    400 bytes are ~808 tokens, over a 1,000-token budget that already holds 500."""
    srv = tiny_server(max_queued_tokens=1000)
    channel, retrieve, embed = _stubs(srv.address)
    text = "word " * 80  # 400 bytes: 101 tokens by the estimate
    with channel:
        _collection(retrieve, "c")
        assert embed.Embed(epb.EmbedRequest(texts=[text] * 8)).embeddings.shape[0] == 8  # fits when idle
        with srv.runtime.budgets["tokens"].admit(500, None):  # as if other callers held 500 tokens
            code, msg, trailers = _status(lambda: embed.Embed(epb.EmbedRequest(texts=[text] * 8)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_tokens=1000" in msg
            assert int(trailers["retry-after-ms"]) > 0 and "grpc-retry-pushback-ms" in trailers
            code, msg, _ = _status(lambda: retrieve.Search(rpb.SearchRequest(collection="c", queries=[text] * 8)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_tokens=1000" in msg
            assert srv.runtime.budgets["texts"].in_flight == 0  # the texts a refusal held are given back
            assert embed.Embed(epb.EmbedRequest(texts=[text] * 4)).embeddings.shape[0] == 4  # what fits runs
        code, msg, _ = _status(lambda: embed.Embed(epb.EmbedRequest(texts=[text] * 10)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_queued_tokens=1000" in msg  # never fits


def test_sigterm_under_load_exits_zero(tmp_path: Path, tiny_backbone: Backbone) -> None:
    """8 clients embedding and a 1,024-query Search grinding when SIGTERM lands: exit code 0 (it
    aborted with SIGABRT, or stayed alive computing), after the grace period and the close, with
    every work thread joined."""
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    stop = threading.Event()
    env = {"LODESTAR_MAX_BATCH_TOKENS": "1024", "LODESTAR_LOG_LEVEL": "INFO"}
    with ServerProcess(folder, tmp_path / "data", env, grace_s=2.0) as server:
        with Client(server.address, timeout=120) as c:
            c.create_collection("c", sparse="none")
            c.upsert("c", [{"id": "a", "text": "some text"}])

        def load(kind: str) -> None:
            with Client(server.address, timeout=60) as c:
                while not stop.is_set():
                    try:
                        if kind == "embed":
                            c.embed([LONG] * 96)
                        else:
                            c.search("c", [LONG] * 1024)
                    except Exception:
                        time.sleep(0.05)

        threads = [threading.Thread(target=load, args=("embed",), daemon=True) for _ in range(8)]
        threads.append(threading.Thread(target=load, args=("search",), daemon=True))
        for t in threads:
            t.start()
        time.sleep(2.0)
        try:
            code, _ = server.terminate(timeout=60)
        finally:
            stop.set()
        out = server.output()
    assert code == 0, out[-2000:]
    assert "terminate called" not in out
    assert JOINED in out, out[-2000:]  # the work threads finished their cancelled work and were joined


def test_interceptor_request_id_is_the_calls(tiny_server: Any) -> None:
    """INTERNAL names the request id the caller sent (x-request-id), the one the access log has."""
    srv = tiny_server()
    channel, _, embed = _stubs(srv.address)
    engine = srv.runtime._engine

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    original = engine.embed_async
    engine.embed_async = boom  # type: ignore[method-assign]
    try:
        with channel:
            code, msg, _ = _status(
                lambda: embed.Embed(epb.EmbedRequest(texts=["x"]), metadata=(("x-request-id", "req-42"),))
            )
    finally:
        engine.embed_async = original  # type: ignore[method-assign]
    assert code == grpc.StatusCode.INTERNAL and "req-42" in msg and "boom" not in msg
    assert json.dumps(msg)  # plain text


@pytest.mark.skipif(not hasattr(os, "setpriority") or sys.platform != "linux", reason="per-thread nice is Linux's")
def test_work_runs_below_the_event_loop_and_the_warm_up_seeds_the_budgets(tiny_server: Any) -> None:
    """The loop answers (and refuses) while the work saturates the cores: the executor's threads and
    the batcher started from one of them run work_nice steps lower; the warm-up forward gave every
    budget a first seconds-per-unit, so the deadline check works from the first request."""
    srv = tiny_server()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    batcher = srv.runtime.embed_engine().batcher._thread
    workers = [t for t in threading.enumerate() if t.name.startswith("lodestar-work")]
    assert workers and batcher.native_id is not None and srv._thread.native_id is not None
    for thread in [batcher, *workers]:
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, base + 10), thread.name
    assert os.getpriority(os.PRIO_PROCESS, srv._thread.native_id) == base  # the event loop's thread
    for kind in ("texts", "tokens", "documents"):
        assert (srv.runtime.budgets[kind].per_unit or 0) > 0
