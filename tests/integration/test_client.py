"""The Python clients as a user meets them: one text is one text, long inputs split to the server's
limit, the asyncio client, retries with backoff, per-call balancing over several addresses."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from lodestar import AsyncClient, Client
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.services.client import ChannelConfig, ClientError, CollectionInfo, ServerInfo

pytestmark = pytest.mark.slow


def test_a_string_is_one_text_and_more_than_the_limit_is_split(tiny_server: Any) -> None:
    srv = tiny_server(max_texts_per_request=3)
    texts = [f"text number {i}" for i in range(10)]
    with Client(srv.address) as c:
        one = c.embed("hello world")
        assert one.vectors.shape[0] == 1 and len(one.token_counts) == 1
        with pytest.raises(ClientError, match="INVALID_ARGUMENT"):  # the server's limit is real...
            c._run(_one_request(texts))
        many = c.embed(texts)  # ...and the client splits around it
        assert many.vectors.shape[0] == 10 and len(many.token_counts) == len(many.truncated) == 10
        alone = np.stack([c.embed(t).vectors[0] for t in texts])
        assert np.allclose(many.vectors, alone, atol=1e-5)  # same rows, in order
        assert many.packed.shape == many.vectors.shape and len(many.packed.data) == many.vectors.nbytes


def _one_request(texts: list[str]) -> Any:
    from lodestar.embed.types import EmbedOptions
    from lodestar.services.client import embed
    from lodestar.services.client.calls import Unary

    return Unary(("embed", "Embed"), embed.request(texts, EmbedOptions()), embed.result, 30)


def test_async_client_has_the_same_methods(tiny_server: Any) -> None:
    srv = tiny_server()

    async def tour() -> tuple[Any, ...]:
        async with AsyncClient(srv.address) as c:
            await c.wait_ready(30)
            info = await c.info()
            vecs = await c.embed(["a b", "c d"])
            created = await c.create_collection("docs", sparse="bm25", chunk_tokens=0)
            await c.upsert("docs", [{"id": "d1", "text": "alpha beta"}, {"id": "d2", "text": "gamma delta"}])
            hits = await c.search("docs", "alpha", k=2, retriever="sparse")
            chunks = [ch async for ch in c.generate_stream("hello", max_new_tokens=4, speculative=False)]
            whole = await c.generate("hello", max_new_tokens=4, speculative=False)
            with pytest.raises(ClientError, match="NOT_FOUND"):
                await c.stats("nope")
            return info, vecs, created, hits, chunks, whole

    info, vecs, created, hits, chunks, whole = asyncio.run(tour())
    assert isinstance(info, ServerInfo) and vecs.vectors.shape == (2, info.dimensions)
    assert isinstance(created, CollectionInfo) and created.config is not None and created.config.sparse == "bm25"
    assert hits[0][0].id == "d1"
    assert chunks[-1].finish_reason == "length" and whole.finish_reason == "length"
    assert whole.token_ids == [t for ch in chunks for t in ch.token_ids]


class _Flaky(pb_grpc.EmbedServiceServicer):
    """Info fails with `code` the first `fail` times, then answers; it counts calls per instance."""

    def __init__(self, fail: int, code: grpc.StatusCode) -> None:
        self.fail, self.code, self.calls = fail, code, 0

    def Info(self, request: Any, context: grpc.ServicerContext) -> pb.InfoResponse:
        self.calls += 1
        if self.calls <= self.fail:
            context.abort(self.code, "busy, retry")
        return pb.InfoResponse(model=f"flaky-{id(self)}")


def _serve(servicer: _Flaky) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EmbedServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retries_with_backoff_on_overload_and_unavailable(code: grpc.StatusCode) -> None:
    flaky = _Flaky(2, code)
    server, port = _serve(flaky)
    try:
        with Client(f"127.0.0.1:{port}", channel=ChannelConfig(initial_backoff_s=0.05)) as c:
            assert c.info().model.startswith("flaky") and flaky.calls == 3
        never = _Flaky(10, code)
        server2, port2 = _serve(never)
        with (
            Client(f"127.0.0.1:{port2}", channel=ChannelConfig(retries=0)) as c,
            pytest.raises(ClientError, match=code.name),
        ):
            c.info()
        assert never.calls == 1
        server2.stop(0)
    finally:
        server.stop(0)


def test_round_robin_over_several_addresses() -> None:
    a, b = _Flaky(0, grpc.StatusCode.OK), _Flaky(0, grpc.StatusCode.OK)
    (sa, pa), (sb, pb_) = _serve(a), _serve(b)
    try:
        with Client(f"ipv4:127.0.0.1:{pa},127.0.0.1:{pb_}") as c:
            models = {c.info().model for _ in range(8)}
        assert len(models) == 2 and a.calls >= 2 and b.calls >= 2  # calls spread over both
        with Client(f"dns:///localhost:{pa}") as c:  # a dns:/// name works as well
            assert c.info().model == f"flaky-{id(a)}"
        with Client(f"ipv4:127.0.0.1:{pa},127.0.0.1:{pb_}", load_balancing="pick_first") as c:
            assert len({c.info().model for _ in range(6)}) == 1  # every call to the first address that answers
        with pytest.raises(ValueError, match="valid are round_robin, pick_first"):
            Client("127.0.0.1:1", load_balancing="least_request")
        with pytest.raises(ValueError, match="valid are round_robin, pick_first"):
            AsyncClient("127.0.0.1:1", load_balancing="least_request")
    finally:
        sa.stop(0)
        sb.stop(0)
