"""Run a blocking iterator (a generation) on a worker thread and consume it from the event loop.

The gRPC handler iterates the async side; when the client goes away (or the deadline passes) the
handler is cancelled, the `finally` below sets the cancel event, and the worker stops at its next
step: no forward runs for a caller that is gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from lodestar.cancel import Token, running

T = TypeVar("T")
_END = object()


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], executor: Executor | None = None, cancel: Token | None = None
) -> AsyncIterator[T]:
    """Yield what `make(cancel)` yields, computed on `executor`; errors (validation included) re-raise here.
    `cancel` (a fresh token by default) is also the worker's current token (lodestar.cancel), so the
    engines it calls (Answer's search and compression) stop at their checkpoints."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
    cancel = cancel if cancel is not None else Token()

    def put(item: object, exc: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, exc))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        with running(cancel):
            produce()

    def produce() -> None:
        it: Iterator[T] | None = None
        try:
            it = make(cancel)
            for item in it:
                put(item)
                if cancel.is_set():
                    if not getattr(item, "finish_reason", None):  # cut short: say why (CANCELLED, DEADLINE_EXCEEDED)
                        cancel.check()
                    break
        except BaseException as exc:  # handed to the event loop, raised there
            put(_END, exc)
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        put(_END)

    # The worker runs in a copy of the caller's context: its log lines carry the request id, and
    # the spans it opens (Answer's stages) nest under the RPC's span.
    future = loop.run_in_executor(executor, contextvars.copy_context().run, work)
    try:
        while True:
            item, exc = await queue.get()
            if item is _END:
                if exc is not None:
                    raise exc
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        if future.done():
            future.result()
