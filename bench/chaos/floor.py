"""The first burst's floor: what answering 256 calls sent at the same instant costs gRPC itself here.

The overload part's first requests all leave at once, and the tail of their refusals sits far above
the later ones'. This part asks how much of that any Python gRPC server pays: the same burst (every
client connected first, each sends one call at the same instant) against

- a bare `grpc.aio` server in its own process, no interceptors, whose Info returns an empty message
  and whose Embed aborts with RESOURCE_EXHAUSTED and a retry hint at once, and
- Lodestar (`lodestar serve`, tiny model, idle), Info, and Embed refused at admission (128 texts
  past `max_queued_texts=64`: the same path a load refusal takes, Budget.admit raising and the
  error interceptor aborting).

Per burst it reports the server's CPU time (one event loop answers them one after another, so the
last answer cannot come sooner than that), the time to the last answer, and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lodestar.bench.chaos.overload import TEXT
from lodestar.bench.chaos.server import ServerProcess, process_cpu_seconds
from lodestar.bench.procs import free_port
from lodestar.embed.v1 import embed_pb2 as epb
from lodestar.embed.v1 import embed_pb2_grpc as epb_grpc

BUDGET = 64  # Lodestar's max_queued_texts for this part: a request of 2x as many texts is refused
METHODS = ("Info", "Embed")


async def _info(request: epb.InfoRequest, context: grpc.aio.ServicerContext) -> epb.InfoResponse:
    return epb.InfoResponse()


async def _refuse(request: epb.EmbedRequest, context: grpc.aio.ServicerContext) -> epb.EmbedResponse:
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over capacity", (("retry-after-ms", "100"),))
    raise AssertionError("abort returns by raising")


async def _serve_bare(port: int) -> None:
    """EmbedService's Info and Embed only, as plain handlers: nothing between gRPC and them."""
    handlers = {
        "Info": grpc.unary_unary_rpc_method_handler(
            _info, epb.InfoRequest.FromString, epb.InfoResponse.SerializeToString
        ),
        "Embed": grpc.unary_unary_rpc_method_handler(
            _refuse, epb.EmbedRequest.FromString, epb.EmbedResponse.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("lodestar.embed.v1.EmbedService", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _bursts(address: str, pid: int, method: str, clients: int, rounds: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 60)
        stubs = [epb_grpc.EmbedServiceStub(ch) for ch in channels]
        request: Any = epb.InfoRequest() if method == "Info" else epb.EmbedRequest(texts=[TEXT] * (2 * BUDGET))
        calls = [getattr(stub, method) for stub in stubs]
        codes: dict[str, int] = {}
        cpu_ms, last_ms, p50, p99 = [], [], [], []
        for _ in range(rounds):
            latencies: list[float] = []

            async def one(call: Any, latencies: list[float]) -> None:
                start = time.monotonic()
                try:
                    await call(request, timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                latencies.append(1000 * (time.monotonic() - start))
                codes[code] = codes.get(code, 0) + 1

            cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
            await asyncio.gather(*(one(call, latencies) for call in calls))
            last_ms.append(1000 * (time.monotonic() - t0))
            cpu_ms.append(1000 * (process_cpu_seconds(pid) - cpu0))
            p50.append(float(np.percentile(latencies, 50)))
            p99.append(float(np.percentile(latencies, 99)))
            await asyncio.sleep(0.5)
        med = lambda xs: round(float(np.median(xs)), 1)  # noqa: E731
        return {
            "codes": codes,
            "server_cpu_ms_per_burst": med(cpu_ms),
            "last_answer_ms": med(last_ms),
            "p50_ms": med(p50),
            "p99_ms": med(p99),
            "p99_ms_per_burst": [round(x, 1) for x in p99],
        }
    finally:
        for ch in channels:
            await ch.close(None)


def bursts(address: str, pid: int, clients: int, rounds: int) -> dict[str, Any]:
    """Each of METHODS, `rounds` bursts of one call from each of `clients` connected channels; medians."""
    gc.collect()
    gc.disable()  # the generator's own full passes would read as the server's latency
    try:
        return {m: asyncio.run(_bursts(address, pid, m, clients, rounds)) for m in METHODS}
    finally:
        gc.enable()


def floor(model: Path, work: Path, clients: int = 256, rounds: int = 8) -> dict[str, Any]:
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "lodestar.bench.chaos.floor", "--serve-bare", str(port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
        result = {"bare_grpc_aio": bursts(f"127.0.0.1:{port}", bare.pid, clients, rounds)}
    finally:
        bare.kill()
        bare.wait(30)
    with ServerProcess(model, work / "floor", {"LODESTAR_MAX_QUEUED_TEXTS": str(BUDGET)}) as server:
        assert server.proc is not None
        result["lodestar"] = bursts(server.address, server.proc.pid, clients, rounds)
    return {"clients": clients, "rounds": rounds} | result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="run the bare gRPC server this part measures against")
    ap.add_argument("--serve-bare", type=int, required=True, metavar="PORT")
    asyncio.run(_serve_bare(ap.parse_args().serve_bare))
