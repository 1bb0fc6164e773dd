"""EmbedService over real gRPC on loopback: every mode, every bad input, streaming, statuses."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from lodestar.embed.modes import MODES
from lodestar.embed.types import EmbedOptions
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.services.client import Client, ClientError

pytestmark = pytest.mark.slow

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell sharply on Monday."]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_over_grpc(client: Client, mode: str) -> None:
    res = client.embed(TEXTS, mode=mode)
    assert res.vectors.shape == (3, 576)
    assert res.vectors.dtype == np.float32
    assert res.mode == mode and res.model == "SmolLM2-135M-Instruct"
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-4)
    assert all(n > 0 for n in res.token_counts) and res.truncated == [False] * 3
    if mode != "bidirectional":  # without its trained adapter, bidirectional is known to be poor
        sims = res.vectors @ res.vectors.T
        assert sims[0, 1] > sims[0, 2], "paraphrase should be closer than an unrelated sentence"


def test_output_dtypes_and_dimensions(client: Client) -> None:
    full = client.embed(TEXTS, mode="prompteol").vectors
    half = client.embed(TEXTS, mode="prompteol", dtype="float16", dimensions=128).vectors
    assert half.shape == (3, 128) and half.dtype == np.float16
    prefix = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(half.astype(np.float32), prefix, atol=2e-3)
    q = client.embed(TEXTS, mode="prompteol", dtype="int8")
    assert q.vectors.dtype == np.int8 and np.abs(q.vectors).max() == 127
    b = client.embed(TEXTS, mode="prompteol", dtype="binary", dimensions=100)
    assert b.packed.shape == (3, 100) and len(b.packed.data) == 3 * 13
    assert np.array_equal(b.vectors, (full[:, :100] > 0).astype(np.uint8))


def test_info(client: Client) -> None:
    info = client.info()
    assert info.model == "SmolLM2-135M-Instruct" and info.dimensions == 576
    assert [m.name for m in info.modes] == list(MODES)
    assert info.num_layers == 30 and "binary" in info.dtypes


def test_stream_keeps_order(client: Client) -> None:
    batches = [[t] for t in TEXTS] * 3
    results = list(client.embed_stream(batches, mode="mean"))
    assert len(results) == len(batches)
    alone = client.embed(TEXTS, mode="mean").vectors
    for i, r in enumerate(results):
        assert float(r.vectors[0] @ alone[i % 3]) > 0.999


def test_concurrent_clients_each_get_their_own_rows(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    """Requests from many clients are batched together; each gets its own vectors in its order."""
    alone = {t: v for t, v in zip(TEXTS, client.embed(TEXTS, mode="mean").vectors)}
    out: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        with Client(server.address) as c:
            order = TEXTS[i % 3 :] + TEXTS[: i % 3]
            out[i] = (order, c.embed(order, mode="mean").vectors)  # type: ignore[assignment]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for order, vecs in out.values():  # type: ignore[misc]
        for text, v in zip(order, vecs):
            assert float(v @ alone[text]) > 0.999


@pytest.mark.parametrize(
    "kwargs, texts, needle",
    [
        ({}, [], "texts is empty"),
        ({}, ["ok", "  "], "text 1 is empty"),
        ({"mode": "nope"}, ["x"], "valid modes are mean, last, prompteol, echo, token_prepend, bidirectional"),
        ({"dimensions": 577}, ["x"], "use 1..576"),
        ({"adapter": "no-such-adapter"}, ["x"], "unknown adapter 'no-such-adapter'"),
        ({"adapter": "a" * 300}, ["x"], "unknown adapter 'aaa"),  # over the filesystem's name limit
        ({"truncate": False}, ["word " * 600], "the limit is max_tokens=512"),
        ({"max_tokens": 100000}, ["x"], "above the server's limit of 512"),
        ({"mode": "echo", "prompt": "only {text} once"}, ["x"], "at least 2 time"),
        ({"mode": "token_prepend", "start_layer": 5, "end_layer": 40}, ["x"], "end_layer < 30"),
    ],
)
def test_bad_input_is_invalid_argument(client: Client, kwargs: dict, texts: list[str], needle: str) -> None:
    with pytest.raises(ClientError) as err:
        client.embed(texts, **kwargs)
    assert err.value.code == "INVALID_ARGUMENT"
    assert needle in err.value.message
    assert client.embed(["still serving"]).vectors.shape == (1, 576)


def test_too_many_texts(tiny_server) -> None:  # type: ignore[no-untyped-def]
    """The server refuses a request over its limit, naming it; the client splits its input around it."""
    srv = tiny_server(max_texts_per_request=4)
    with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.EmbedServiceStub(ch).Embed(pb.EmbedRequest(texts=["a"] * 5), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_texts_per_request=4" in err.value.details()
    with Client(srv.address) as c:
        assert c.embed(["a"] * 5).vectors.shape[0] == 5


def test_truncation_cuts_to_the_limit(client: Client) -> None:
    res = client.embed(["word " * 600, "short"], max_tokens=64)
    assert res.truncated == [True, False] and res.token_counts[0] == 64


def test_reflection_lists_services(server) -> None:  # type: ignore[no-untyped-def]
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"lodestar.embed.v1.EmbedService", "grpc.health.v1.Health"} <= names


def test_unexpected_error_is_internal_with_request_id(tiny_server, caplog) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server()
    engine = srv.runtime.embed_engine()
    original = engine._run
    engine._run = lambda spec, batch: (_ for _ in ()).throw(RuntimeError("boom in the forward"))
    with Client(srv.address) as c:
        with pytest.raises(ClientError) as err:
            c.embed(["x"])
        assert err.value.code == "INTERNAL"
        assert "request id" in err.value.message and "boom" not in err.value.message
        engine._run = original
        assert c.embed(["x"]).vectors.shape == (1, 64)


def test_over_capacity_is_resource_exhausted(tiny_server) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server(max_queued_texts=8)
    engine = srv.runtime.embed_engine()
    gate = threading.Event()
    original = engine._run

    def slow(spec, batch):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return original(spec, batch)

    engine._run = slow
    with Client(srv.address) as c:
        first = threading.Thread(target=lambda: c.embed(["x"] * 8))
        first.start()
        time.sleep(0.3)  # the first request is running: its 8 texts count until it finishes
        with pytest.raises(ClientError) as err:
            c.embed(["z"])
        gate.set()
        first.join()
    assert err.value.code == "RESOURCE_EXHAUSTED" and "max_queued_texts=8" in err.value.message
    with Client(srv.address) as c:  # more than the queue can ever hold: no retry would help
        with pytest.raises(ClientError) as err:
            c.embed(["w"] * 9)
    assert err.value.code == "INVALID_ARGUMENT" and "max_queued_texts=8: split the request" in err.value.message


def test_expired_deadline_drops_queued_work(tiny_server) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server()
    engine = srv.runtime.embed_engine()
    gate = threading.Event()
    seen: list[list[int]] = []
    original = engine._run

    def slow(spec, batch):  # type: ignore[no-untyped-def]
        seen.extend(e.ids for e in batch)
        gate.wait(10)
        return original(spec, batch)

    engine._run = slow
    with Client(srv.address) as c:
        blocker = threading.Thread(target=lambda: c.embed(["first"]))
        blocker.start()
        time.sleep(0.3)
        with pytest.raises(ClientError) as err:
            c.embed(["late request"], timeout=0.5)
        assert err.value.code == "DEADLINE_EXCEEDED"
        gate.set()
        blocker.join()
        time.sleep(0.2)
        late = engine.prepare(["late request"], EmbedOptions()).items[0].ids
        assert late not in seen, "the expired request must never reach the model"
        assert engine.batcher.stats.dropped >= 1
        assert c.embed(["after"]).vectors.shape == (1, 64)


def test_sparse_output_over_grpc(client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    both = client.embed(["A man plays a guitar.", "Markets fell."], mode="echo", sparse=True, sparse_top_k=32)
    assert both.vectors.shape == (2, 576) and both.sparse is not None and len(both.sparse) == 2
    ids, weights = both.sparse[0]
    assert 0 < len(ids) <= 32 and (weights > 0).all() and list(weights) == sorted(weights, reverse=True)
    # the same batch without the dense side: the same weights (a different batch could pad differently,
    # and bf16 kernels, AMX's among them, round near-ties differently with the shape)
    only = client.embed(
        ["A man plays a guitar.", "Markets fell."], mode="echo", sparse=True, sparse_top_k=32, with_dense=False
    )
    assert only.vectors.shape == (2, 0) and list(only.sparse[0][0]) == list(ids)
    assert both.sparse_tokens is None and only.sparse_tokens is None  # asked for only
    named = client.embed(
        ["A man plays a guitar.", "Markets fell."],
        mode="echo",
        sparse=True,
        sparse_top_k=32,
        with_dense=False,
        sparse_tokens=True,
    )
    assert named.sparse_tokens == [tokenizer.convert_ids_to_tokens(v.tolist()) for v, _ in named.sparse]
    assert "Ġguitar" in named.sparse_tokens[0]
    with pytest.raises(ClientError) as err:
        client.embed(["x"], mode="echo", sparse=True, sparse_top_k=99999)
    assert err.value.code == "INVALID_ARGUMENT" and "top_k must be in 0..1024" in err.value.message


def test_sparse_vectors_of_the_bundled_model_start_sparse_and_lexical(client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Without an adapter the echo copy predicts the text's own tokens; standardised, only those
    and a few hundred expansions clear the shift (raw log1p(relu(logits)) was non-zero almost
    everywhere), so the cap of 1024 weights per text is not reached."""
    text = "The pianist played Chopin at the concert hall."
    ids, weights = client.embed([text], mode="echo", sparse=True, sparse_top_k=1024, with_dense=False).sparse[0]
    assert 0 < len(ids) < 1024 and (weights > 0).all()
    own = tokenizer(text, add_special_tokens=False)["input_ids"]
    # the copy's positions predict each next token; its first one is predicted before the span
    assert set(own[1:]) <= {int(i) for i in ids}, "every later token of the text is in its vector"


@pytest.mark.parametrize("native", [False, True], ids=["bf16-emulated", "bf16-native"])
def test_auto_runtime_serves_through_the_measured_runtime_on_cpu(  # type: ignore[no-untyped-def]
    tiny_server, tmp_path, tiny_backbone, monkeypatch, native: bool
) -> None:
    """The server's default (auto) on CPU with a float32 model: where bf16 is emulated, ONNX Runtime
    with the decoder exported into cache_dir once at load (the warm-up); where it is native, bf16
    weight copies. Info names it and the vectors are within its bound of the eager engine's."""
    from lodestar.embed import runtime as rt
    from lodestar.embed.engine import EmbeddingEngine

    monkeypatch.setattr(rt, "native_bf16", lambda device: native)
    srv = tiny_server(embed_runtime="auto", cache_dir=tmp_path / "cache")
    assert bool(list((tmp_path / "cache" / "onnx").glob("decoder-*.onnx"))) is not native
    eager = EmbeddingEngine(tiny_backbone)
    try:
        with Client(srv.address) as c:
            assert c.info().runtime == ("bf16_weights" if native else "onnxruntime")
            got = np.asarray(c.embed(["a short text", "another, somewhat longer text"]).vectors)
        want = eager.embed(["a short text", "another, somewhat longer text"]).vectors
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert (cos >= (0.999 if native else 0.9999)).all()
    finally:
        eager.close()
