"""Overload: many concurrent clients over Embed, Search and Upsert against a server process.

What must hold: a request past the server's budget is refused at once (RESOURCE_EXHAUSTED, p99 well
under 50 ms), accepted ones finish, no INTERNAL/UNKNOWN, and the server's CPU goes idle soon after
the last client leaves (no work continues for callers that are gone).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np

from lodestar.bench.chaos.server import ServerProcess
from lodestar.embed.v1 import embed_pb2 as epb
from lodestar.embed.v1 import embed_pb2_grpc as epb_grpc
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc

TEXT = "an ordinary sentence about retrieval, embeddings and the servers that answer them " * 4
COLLECTION = "load"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def overload(
    server: ServerProcess, clients: int = 256, seconds: float = 20.0, batch: int = 64, deadline: float = 30.0
) -> dict[str, Any]:
    """`clients` concurrent clients, each with its own channel, loop Embed/Search/Upsert of `batch`
    items for `seconds`. The clients are coroutines on one event loop (grpc.aio): 256 client threads
    would measure their own GIL contention instead of the server's answer time."""
    return asyncio.run(_overload(server, clients, seconds, batch, deadline))


async def _overload(server: ServerProcess, clients: int, seconds: float, batch: int, deadline: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        try:
            await rpb_grpc.RetrieveServiceStub(ch).CreateCollection(
                rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name=COLLECTION)), timeout=60
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    codes: Counter = Counter()
    refused_ms: list[float] = []
    ok_ms: list[float] = []
    hints = 0
    stop_at = time.monotonic() + seconds

    async def client(n: int) -> None:
        nonlocal hints
        rng = random.Random(n)
        async with grpc.aio.insecure_channel(server.address) as ch:
            embed, retrieve = epb_grpc.EmbedServiceStub(ch), rpb_grpc.RetrieveServiceStub(ch)
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                kind = rng.choice(("embed", "search", "upsert"))
                start = time.monotonic()
                code = grpc.StatusCode.OK
                try:
                    if kind == "embed":
                        await embed.Embed(epb.EmbedRequest(texts=[TEXT] * batch), timeout=deadline)
                    elif kind == "search":
                        await retrieve.Search(
                            rpb.SearchRequest(collection=COLLECTION, queries=[TEXT] * batch), timeout=deadline
                        )
                    else:
                        docs = [rpb.Document(id=f"c{n}-{i}-{j}", text=TEXT) for j in range(batch)]
                        await retrieve.Upsert(
                            rpb.UpsertRequest(collection=COLLECTION, documents=docs), timeout=deadline
                        )
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    trailers: Any = e.trailing_metadata() or ()
                    hints += any(item[0] == "retry-after-ms" for item in trailers)
                ms = 1000 * (time.monotonic() - start)
                codes[code.name] += 1
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused_ms.append(ms)
                    await asyncio.sleep(0.05 + rng.random() * 0.2)  # a client backs off a little
                elif code == grpc.StatusCode.OK:
                    ok_ms.append(ms)

    probe_ms: list[float] = []

    async def probe() -> None:
        """The cheapest call (EmbedService.Info), every 50 ms: what any answer costs on this machine
        now, next to which the refusals' latency reads."""
        async with grpc.aio.insecure_channel(server.address) as ch:
            info = epb_grpc.EmbedServiceStub(ch)
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    await info.Info(epb.InfoRequest(), timeout=deadline)
                    probe_ms.append(1000 * (time.monotonic() - start))
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)

    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    tasks = [asyncio.ensure_future(client(n)) for n in range(clients)] + [asyncio.ensure_future(probe())]
    _, unfinished = await asyncio.wait(tasks, timeout=seconds + deadline + 10)
    for task in unfinished:
        task.cancel()
    left = time.monotonic()
    cpu_busy = (server.cpu_seconds() - cpu0) / (left - t0)
    idle = await asyncio.get_running_loop().run_in_executor(None, server.idle_after, left)
    return {
        "clients": clients,
        "seconds": seconds,
        "batch": batch,
        "requests": sum(codes.values()),
        "codes": dict(codes.most_common()),
        "ok": codes["OK"],
        "refused": codes["RESOURCE_EXHAUSTED"],
        "refused_with_retry_hint": hints,
        "refused_p50_ms": _pct(refused_ms, 50),
        "refused_p99_ms": _pct(refused_ms, 99),
        "info_probe_p50_ms": _pct(probe_ms, 50),
        "info_probe_p99_ms": _pct(probe_ms, 99),
        "ok_p50_ms": _pct(ok_ms, 50),
        "ok_p99_ms": _pct(ok_ms, 99),
        "internal_or_unknown": codes["INTERNAL"] + codes["UNKNOWN"],
        "unfinished_clients": len(unfinished),
        "server_cpu_cores_during": round(cpu_busy, 2),
        "idle_after_s": None if idle is None else round(idle, 2),
    }
