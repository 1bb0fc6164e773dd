"""Server factory and process entry point.

`create_server(settings) -> (server, port)` builds a grpc.aio server with every requested service,
health (NOT_SERVING until the model is loaded, and again during shutdown), reflection, the edge
(TLS, tokens, request ids, access log, metrics, tracing: services/edge.py) and the error
interceptor, message-size and concurrency caps, and starts loading the model in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lodestar.errors import InvalidInput, Unavailable
from lodestar.services.compress import CompressServicer
from lodestar.services.edge import Edge, build_edge
from lodestar.services.embed import EmbedServicer
from lodestar.services.generate import GenerateServicer
from lodestar.services.index import IndexServicer
from lodestar.services.interceptor import ErrorInterceptor
from lodestar.services.retrieve import RetrieveServicer
from lodestar.services.runtime import NOT_SERVING, Runtime
from lodestar.services.settings import SERVICES, Settings
from lodestar.services.work import work_pool

if TYPE_CHECKING:
    from lodestar.backbone import Backbone

log = logging.getLogger(__name__)
T = TypeVar("T")


class Servicer(Protocol):
    """What the factory needs of a servicer class: its service descriptor and its generated add function."""

    SERVICE: Any  # google.protobuf.descriptor.ServiceDescriptor

    def __init__(self, runtime: Runtime) -> None: ...

    @staticmethod
    def add_to_server(servicer: Any, server: grpc.aio.Server) -> None: ...


_RUNTIMES: weakref.WeakKeyDictionary[grpc.aio.Server, Runtime] = weakref.WeakKeyDictionary()
_EDGES: weakref.WeakKeyDictionary[grpc.aio.Server, Edge] = weakref.WeakKeyDictionary()


def runtime_of(server: grpc.aio.Server) -> Runtime:
    return _RUNTIMES[server]


def edge_of(server: grpc.aio.Server) -> Edge:
    return _EDGES[server]


# Every servicer, by the short name `--only` uses; each class names its gRPC service and how it is added.
SERVICERS: dict[str, type[Servicer]] = {
    "embed": EmbedServicer,
    "retrieve": RetrieveServicer,
    "index": IndexServicer,
    "compress": CompressServicer,
    "generate": GenerateServicer,
}


def _register(server: grpc.aio.Server, runtime: Runtime, only: tuple[str, ...]) -> list[str]:
    """Add the servicers named in `only`; returns their full gRPC service names."""
    names = []
    runtime.serves = set(only)
    for service in only:
        if service not in SERVICERS:
            raise InvalidInput(f"unknown service {service!r}: valid are {', '.join(SERVICES)}")
        servicer = SERVICERS[service]
        servicer.add_to_server(servicer(runtime), server)
        names.append(servicer.SERVICE.full_name)
    return names


async def create_server(
    settings: Settings, *, backbone: Backbone | None = None, owns_process: bool = False
) -> tuple[grpc.aio.Server, int]:
    """Build and bind (not start) the server; the model loads in the background (`backbone` skips that).
    `owns_process` (`lodestar serve`): once loaded, what loading built is frozen out of the garbage
    collector's full passes (Runtime.load)."""
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Clients ping idle connections while a call is open (the Python client every 60 s): accept
        # pings every 10 s instead of answering them with GOAWAY; ping clients to find dead peers.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    # Blocking work (model load, forwards, FAISS, writes) on threads below the loop's priority; the
    # batcher thread and the OpenMP pools started from them inherit it (services/work.py).
    pool = work_pool(settings.work_nice)
    asyncio.get_running_loop().set_default_executor(pool)
    runtime = Runtime(settings, [], freeze_after_load=owns_process)
    runtime.work_pool = pool
    edge = build_edge(settings, runtime)
    runtime.on_close(edge.close)
    server = grpc.aio.server(
        interceptors=[*edge.interceptors, ErrorInterceptor()],
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    runtime.service_names = _register(server, runtime, settings.only)
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, server)
    reflection.enable_server_reflection(
        [*runtime.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = edge.bind(server, address)
    except RuntimeError as exc:
        edge.close()
        raise Unavailable(f"cannot bind {address}: {exc}") from exc
    await runtime.set_health(NOT_SERVING)
    _RUNTIMES[server] = runtime
    _EDGES[server] = edge
    runtime.load_task = asyncio.ensure_future(runtime.load(backbone))
    return server, port


CLOSE_S = 1.5  # after the grace period: cancelling what is left and closing the engines, at most this long
JOIN_S = 0.3  # then joining the work threads (serve), at most this long: the process exits within grace + 2 s
JOINED = "stopped; every work thread joined"  # serve's last line when nothing was left running


async def shutdown(server: grpc.aio.Server, grace: float, close_s: float = CLOSE_S) -> bool:
    """Graceful stop: health NOT_SERVING and nothing more admitted; in-flight calls get `grace` seconds,
    then the rest are cancelled (their engine work stops at its next checkpoint) and the engines close
    (batcher, job dispatcher, collections' snapshots) within `close_s`. -> whether the close finished
    in time (a collection's snapshot cut short is no loss: its store has every acknowledged write)."""
    runtime = _RUNTIMES.get(server)
    if runtime is not None:
        await runtime.begin_shutdown()
        # a call still running when the grace period ends is cancelled by grpc; its engine work too
        cancel = asyncio.get_running_loop().call_later(
            grace, runtime.tokens.cancel_all, "the server is shutting down; retry on another replica"
        )
    await server.stop(grace)
    if runtime is None:
        return True
    cancel.cancel()
    cancelled = runtime.tokens.cancel_all("the server is shutting down; retry on another replica")
    if cancelled:
        log.info("shutdown: cancelled %d calls still running", cancelled)
    closing = threading.Thread(target=runtime.close, name="lodestar-close", daemon=True)
    closing.start()
    end = time.monotonic() + close_s
    while closing.is_alive() and time.monotonic() < end:
        await asyncio.sleep(0.02)
    if closing.is_alive():
        log.warning(
            "shutdown: engines still closing after %.1fs; exiting anyway (every acknowledged write is stored)", close_s
        )
        return False
    return True


async def serve(settings: Settings, *, backbone: Backbone | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down within grace_period_s + CLOSE_S (see `shutdown`); the
    caller exits the process at once after (`run_and_exit`): threads still finishing cancelled work
    (FAISS, torch, the executor) are not waited for."""
    server, port = await create_server(settings, backbone=backbone, owns_process=True)
    await server.start()
    log.info("lodestar serving %s on %s:%d (model loading)", ",".join(settings.only), settings.host, port)
    print(f"lodestar: listening on {settings.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received; draining for up to %.1fs", settings.grace_period_s)
    end = time.monotonic() + settings.grace_period_s + CLOSE_S + JOIN_S
    await shutdown(server, settings.grace_period_s)
    left = await join_threads(_RUNTIMES[server].work_pool, end)
    if left:
        log.warning("stopped; not waiting for threads still inside a native call: %s", ", ".join(left[:8]))
    else:
        log.info(JOINED)


ENGINE_THREADS = ("lodestar-", "calibrate-")  # daemon threads the engines start: batcher, jobs, shards, close


async def join_threads(pool: ThreadPoolExecutor | None, end: float) -> list[str]:
    """Stop the work pool (queued work cancelled) and wait until `end` (time.monotonic()) for its
    threads, the engines' own (ENGINE_THREADS) and every other non-daemon thread to finish; -> the
    names of those still running (a cancelled call inside one long native call: a FAISS search, a
    forward)."""
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)

    def running() -> list[str]:
        me = threading.current_thread()
        return [
            t.name
            for t in threading.enumerate()
            if t is not me and t.is_alive() and (not t.daemon or t.name.startswith(ENGINE_THREADS))
        ]

    while running() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return running()


def run_and_exit(settings: Settings) -> None:
    """`lodestar serve`: serve until a signal, then exit 0 at once. Not asyncio.run: closing its loop
    waits for every executor thread (a cancelled search still inside FAISS), and interpreter
    teardown with native threads alive aborts ("terminate called without an active exception")."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(serve(settings))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class BackgroundServer:
    """A server on its own event-loop thread: for tests and the in-process benchmark."""

    def __init__(self, settings: Settings, backbone: Backbone | None = None) -> None:
        self.settings = settings
        self._backbone = backbone
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lodestar-server", daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def start(self, wait_loaded: bool = True, timeout: float = 600) -> BackgroundServer:
        self._thread.start()
        self.server, self.port = self._call(create_server(self.settings, backbone=self._backbone))
        self._call(self.server.start())
        if wait_loaded:
            self._call(runtime_of(self.server).loaded.wait(), timeout)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def runtime(self) -> Runtime:
        assert self.server is not None
        return runtime_of(self.server)

    @property
    def edge(self) -> Edge:
        assert self.server is not None
        return edge_of(self.server)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (idempotent)."""
        if not self._loop.is_running():
            return
        if self.server is not None:
            grace = self.settings.grace_period_s if grace is None else grace
            self._call(shutdown(self.server, grace, close_s=60))  # tests reuse the data folder: close fully
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0)
