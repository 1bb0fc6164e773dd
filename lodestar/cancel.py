"""Cancellation the engines check at their batch and chunk boundaries (no gRPC here).

The servicer makes a `Token` per call (the call's deadline; set when the client goes away or the
server shuts down) and runs the engine call with it as the current token (`running`). Engines call
`checkpoint()` between batches, chunks and stages: a cancelled or expired call raises there and its
work stops; a write already committed stays committed, one not yet begun is not begun. Work queued
elsewhere (the embedding batcher's futures) registers `on_cancel` to be taken out at once.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lodestar.errors import Cancelled, DeadlineExceeded


class Token(threading.Event):
    """A threading.Event (the decoder's cancel flag) that is also set by its deadline (time.monotonic())."""

    def __init__(self, deadline: float | None = None) -> None:
        super().__init__()
        self.deadline = deadline
        self.reason = "the call was cancelled"
        self._callbacks: list[Callable[[], object]] = []
        self._cb_lock = threading.Lock()

    @classmethod
    def after(cls, seconds: float | None) -> Token:
        """A token whose deadline is `seconds` from now (None: none)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def is_set(self) -> bool:
        return super().is_set() or self.expired()

    def remaining(self) -> float | None:
        """Seconds to the deadline (None: none)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def cancel(self, reason: str = "the call was cancelled") -> None:
        """Set the token and run what registered (idempotent)."""
        with self._cb_lock:
            if super().is_set():
                return
            self.reason = reason
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def set(self) -> None:
        self.cancel()

    def on_cancel(self, fn: Callable[[], object]) -> None:
        """Run `fn` when the token is cancelled (at once if it already is)."""
        with self._cb_lock:
            if not super().is_set():
                self._callbacks.append(fn)
                return
        fn()

    def check(self) -> None:
        """Raise DeadlineExceeded past the deadline, Cancelled once cancelled."""
        if super().is_set():
            raise Cancelled(self.reason)
        if self.expired():
            raise DeadlineExceeded("the request's deadline passed; its remaining work was stopped")


_CURRENT: contextvars.ContextVar[Token | None] = contextvars.ContextVar("lodestar_cancel", default=None)


def current() -> Token | None:
    """The token of the call this thread works for (None outside a call: never cancelled)."""
    return _CURRENT.get()


def checkpoint() -> None:
    """Stop here if the current call is cancelled or past its deadline."""
    token = _CURRENT.get()
    if token is not None:
        token.check()


@contextmanager
def running(token: Token | None) -> Iterator[None]:
    """Make `token` the current one for the block (in this thread's context)."""
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)
