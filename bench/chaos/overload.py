"""Overload: many concurrent clients over Embed, Search and Upsert against a server process.

What must hold: a request past the server's budget is refused at once (RESOURCE_EXHAUSTED, p99 well
under 50 ms), accepted ones finish, no INTERNAL/UNKNOWN, and the server's CPU goes idle soon after
the last client leaves (no work continues for callers that are gone).
"""

from __future__ import annotations

import asyncio
import gc
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
KINDS = ("embed", "search", "upsert")
MAX_BACKOFF_S = 5.0
CONNECT_S = 30.0  # every client's channel is connected before the first request is sent


def backoff_s(hint_ms: float | None, rng: random.Random) -> float:
    """How long a refused client waits: the server's retry-after-ms hint with jitter (as the Python
    client does), at most MAX_BACKOFF_S so it keeps trying within the run; without a hint, 50-250 ms."""
    if hint_ms is None:
        return 0.05 + rng.random() * 0.2
    return min(MAX_BACKOFF_S, hint_ms / 1000) * (0.5 + rng.random())


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def overload(
    server: ServerProcess,
    clients: int = 256,
    seconds: float = 20.0,
    batch: int = 64,
    deadline: float = 30.0,
    polite: bool = True,
) -> dict[str, Any]:
    """`clients` concurrent clients, each with its own channel, loop Embed/Search/Upsert of `batch`
    items for `seconds`. The clients are coroutines on one event loop (grpc.aio): 256 client threads
    would measure their own GIL contention instead of the server's answer time. `polite` clients wait
    the refusal's retry-after-ms hint (backoff_s); impolite ones retry after 50-250 ms whatever it says."""
    # The load generator's own full GC passes would stall every client at once and read as the
    # server's latency: off for the run (a few seconds of garbage).
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_overload(server, clients, seconds, batch, deadline, polite)) | {"polite": polite}
    finally:
        gc.enable()


async def _overload(
    server: ServerProcess, clients: int, seconds: float, batch: int, deadline: float, polite: bool
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        try:
            await rpb_grpc.RetrieveServiceStub(ch).CreateCollection(
                rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name=COLLECTION)), timeout=60
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    refused_by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    later_refused_ms: list[float] = []  # refusals of every request after a client's first
    ok_ms: list[float] = []
    hints = 0
    stop_at = time.monotonic() + CONNECT_S + seconds  # reset when every client is connected
    connected = 0
    go = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal hints, connected, stop_at
        rng = random.Random(n)
        async with grpc.aio.insecure_channel(server.address) as ch:
            embed, retrieve = epb_grpc.EmbedServiceStub(ch), rpb_grpc.RetrieveServiceStub(ch)
            # Connect first, as a load generator warms up: the 256 TCP and HTTP/2 handshakes are not
            # refusals' latency, and the first wave of requests should meet a server that is up.
            await asyncio.wait_for(ch.channel_ready(), CONNECT_S)
            connected += 1
            if connected == clients:
                stop_at = time.monotonic() + seconds
                go.set()
            calls: dict[str, Any] = {"embed": embed.Embed, "search": retrieve.Search, "upsert": retrieve.Upsert}

            def build(i: int) -> tuple[str, Any]:
                """The i-th request, built before its clock starts: the generator's own work (64
                documents' protos for an Upsert) is not the server's answer time."""
                kind = rng.choice(KINDS)
                if kind == "embed":
                    return kind, epb.EmbedRequest(texts=[TEXT] * batch)
                if kind == "search":
                    return kind, rpb.SearchRequest(collection=COLLECTION, queries=[TEXT] * batch)
                docs = [rpb.Document(id=f"c{n}-{i}-{j}", text=TEXT) for j in range(batch)]
                return kind, rpb.UpsertRequest(collection=COLLECTION, documents=docs)

            i = 1
            kind, request = build(i)  # the first burst's requests exist before it starts
            await go.wait()
            while time.monotonic() < stop_at:
                start = time.monotonic()
                code = grpc.StatusCode.OK
                hint_ms: float | None = None
                try:
                    await calls[kind](request, timeout=deadline)
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    trailers: Any = e.trailing_metadata() or ()
                    hint = [item[1] for item in trailers if item[0] == "retry-after-ms"]
                    hints += bool(hint)
                    hint_ms = float(hint[0]) if hint else None
                ms = 1000 * (time.monotonic() - start)
                by_kind[kind][code.name] += 1
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused_by_kind[kind].append(ms)
                    if i > 1:
                        later_refused_ms.append(ms)
                    await asyncio.sleep(backoff_s(hint_ms if polite else None, rng))
                elif code == grpc.StatusCode.OK:
                    ok_ms.append(ms)
                i += 1
                kind, request = build(i)

    probe_ms: list[float] = []

    async def probe() -> None:
        """The cheapest call (EmbedService.Info), every 50 ms: what any answer costs on this machine
        now, next to which the refusals' latency reads."""
        async with grpc.aio.insecure_channel(server.address) as ch:
            info = epb_grpc.EmbedServiceStub(ch)
            await go.wait()
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
    _, unfinished = await asyncio.wait(tasks, timeout=CONNECT_S + seconds + deadline + 10)
    for task in unfinished:
        task.cancel()
    left = time.monotonic()
    cpu_busy = (server.cpu_seconds() - cpu0) / (left - t0)
    idle = await asyncio.get_running_loop().run_in_executor(None, server.idle_after, left)
    codes: Counter = sum(by_kind.values(), Counter())
    refused_ms = [ms for k in KINDS for ms in refused_by_kind[k]]
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
        # Every client sends its first request at the same instant; the event loop admits or refuses
        # that burst one call at a time, so its last refusals wait behind the whole burst. Later
        # requests arrive spread out by the clients' random back-off, as a real overload's do.
        "refused_after_first_p50_ms": _pct(later_refused_ms, 50),
        "refused_after_first_p99_ms": _pct(later_refused_ms, 99),
        "by_kind": {
            k: {"codes": dict(by_kind[k].most_common()), "refused_p99_ms": _pct(refused_by_kind[k], 99)} for k in KINDS
        },
        "info_probe_p50_ms": _pct(probe_ms, 50),
        "info_probe_p99_ms": _pct(probe_ms, 99),
        "ok_p50_ms": _pct(ok_ms, 50),
        "ok_p99_ms": _pct(ok_ms, 99),
        "internal_or_unknown": codes["INTERNAL"] + codes["UNKNOWN"],
        "unfinished_clients": len(unfinished),
        "server_cpu_cores_during": round(cpu_busy, 2),
        "idle_after_s": None if idle is None else round(idle, 2),
    }
