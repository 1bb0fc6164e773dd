"""Blocking engine calls run off the event loop under a cancellation token (lodestar/cancel.py).

The token carries the call's deadline; it is cancelled when the handler is (the client went away,
the deadline passed) and when the server shuts down, and the engine stops at its next checkpoint.
The worker thread runs in a copy of the caller's context: its log lines carry the request id.

Work runs at a lower CPU priority than the event loop (`work_pool`): when the model's forward keeps
every core busy, the loop still answers at once, and a request past the budget is refused in
milliseconds instead of waiting for a time slice behind the forward.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from lodestar.cancel import Token, running

log = logging.getLogger(__name__)
T = TypeVar("T")
GONE = "the client went away or its deadline passed; the work was stopped"


def lower_priority(nice: int) -> None:
    """Run the calling thread `nice` steps below its present priority (Linux: per thread). Threads it
    starts inherit it: the embedding batcher, built on a work thread, and the OpenMP pools of torch
    and FAISS that each thread creates on its first parallel region."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # not Linux (a thread id is not a process there), or a sandbox refuses it
        log.debug("could not lower this thread's priority: %s", exc)


def work_pool(nice: int, workers: int | None = None, name: str = "lodestar-work") -> ThreadPoolExecutor:
    """A pool whose threads run `nice` steps below the event loop (see lower_priority)."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,))


class Tokens:
    """The tokens of the calls in flight, so shutdown can cancel what is left after the grace period."""

    def __init__(self) -> None:
        self._live: set[Token] = set()
        self._lock = threading.Lock()

    def new(self, context: grpc.aio.ServicerContext | None) -> Token:
        token = Token.after(context.time_remaining() if context is not None else None)
        with self._lock:
            self._live.add(token)
        return token

    def done(self, token: Token) -> None:
        with self._lock:
            self._live.discard(token)

    def cancel_all(self, reason: str) -> int:
        """Cancel every call in flight; -> how many."""
        with self._lock:
            live, self._live = list(self._live), set()
        for token in live:
            token.cancel(reason)
        return len(live)

    def __len__(self) -> int:
        return len(self._live)


async def run_blocking(tokens: Tokens, context: grpc.aio.ServicerContext | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the default executor with the call's token current; cancelled with the handler."""
    token = tokens.new(context)
    ctx = contextvars.copy_context()

    def call() -> T:
        with running(token):
            return fn(*args)

    future = asyncio.get_running_loop().run_in_executor(None, ctx.run, call)
    try:
        return await future
    except asyncio.CancelledError:
        token.cancel(GONE)
        raise
    finally:
        tokens.done(token)
