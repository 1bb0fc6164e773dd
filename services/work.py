"""Blocking engine calls run off the event loop under a cancellation token (lodestar/cancel.py).

The token carries the call's deadline; it is cancelled when the handler is (the client went away,
the deadline passed) and when the server shuts down, and the engine stops at its next checkpoint.
The worker thread runs in a copy of the caller's context: its log lines carry the request id.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from lodestar.cancel import Token, running

T = TypeVar("T")
GONE = "the client went away or its deadline passed; the work was stopped"


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
