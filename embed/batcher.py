"""Dynamic batcher: merges texts from concurrent requests into length-sorted, token-bounded batches.

Runs the model on its own thread (never on the gRPC event loop). Requests only share a batch when
they share a forward (`ForwardSpec`); each request gets its own rows back in its own order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from lodestar.embed.modes import Encoded, ForwardSpec
from lodestar.errors import DeadlineExceeded, Overloaded
from lodestar.telemetry import NOOP, Telemetry

log = logging.getLogger(__name__)

RunBatch = Callable[[ForwardSpec, list[Encoded]], torch.Tensor]


def _settle(future: Future, result: object = None, exc: BaseException | None = None) -> None:
    """Resolve `future` unless its caller cancelled it meanwhile: a cancel can land between our
    done() check and set_*(), and the InvalidStateError would kill the batcher thread."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


@dataclass(eq=False)
class _Request:
    key: ForwardSpec
    items: list[Encoded]
    deadline: float | None  # time.monotonic() by which the work must start
    future: Future = field(default_factory=Future)
    cursor: int = 0  # items before it are dispatched
    done: int = 0
    rows: list[torch.Tensor | None] = field(default_factory=list)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    tokens: int = 0  # real tokens
    padded_tokens: int = 0  # tokens run, padding included
    dropped: int = 0  # requests dropped for a passed deadline or cancellation


class Batcher:
    def __init__(
        self,
        run: RunBatch,
        max_batch_tokens: int = 16384,
        max_queued_texts: int = 8192,
        max_round_texts: int = 2048,
        max_batch_rows: int = 64,
        min_batch_rows: int = 16,
        max_padding: float = 1.25,
    ) -> None:
        self._run = run
        self.max_batch_rows = max_batch_rows
        self.min_batch_rows = min_batch_rows
        self.max_padding = max_padding
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_texts = max_queued_texts
        self.max_round_texts = max_round_texts
        self._pending: deque[_Request] = deque()
        self._queued = 0  # texts not yet dispatched
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self.telemetry: Telemetry = NOOP  # the server sets its metrics here
        self._thread = threading.Thread(target=self._loop, name="lodestar-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: ForwardSpec, items: list[Encoded], timeout: float | None = None) -> Future:
        """Queue a request; its future resolves to a (len(items), H) float32 tensor."""
        req = _Request(key=key, items=items, deadline=None if timeout is None else time.monotonic() + timeout)
        req.rows = [None] * len(items)
        with self._cond:
            if self._closed:
                raise Overloaded("the embedding batcher is shut down")
            if self._queued + len(items) > self.max_queued_texts:
                raise Overloaded(
                    f"server over capacity: {self._queued} texts queued, limit {self.max_queued_texts} "
                    "(LODESTAR_MAX_QUEUED_TEXTS); retry later"
                )
            self._pending.append(req)
            self._queued += len(items)
            self._cond.notify()
        return req.future

    @property
    def queued(self) -> int:
        return self._queued

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _drop_dead(self) -> None:
        """Drop requests whose deadline passed or whose caller cancelled; they never reach the model."""
        now = time.monotonic()
        alive: deque[_Request] = deque()
        for req in self._pending:
            if req.future.cancelled() or req.expired(now):
                self._queued -= len(req.items) - req.cursor
                self.stats.dropped += 1
                if not req.future.cancelled():
                    _settle(req.future, exc=DeadlineExceeded("deadline passed while the request was queued"))
            else:
                alive.append(req)
        self._pending = alive

    def _take_round(self) -> list[tuple[_Request, int]]:
        """Items of the oldest request's forward kind, across requests, FIFO, up to max_round_texts."""
        key = self._pending[0].key
        taken: list[tuple[_Request, int]] = []
        for req in list(self._pending):
            if req.key != key:
                continue
            n = min(len(req.items) - req.cursor, self.max_round_texts - len(taken))
            taken += [(req, i) for i in range(req.cursor, req.cursor + n)]
            req.cursor += n
            if req.cursor == len(req.items):
                self._pending.remove(req)
            if len(taken) >= self.max_round_texts:
                break
        self._queued -= len(taken)
        return taken

    def _chunks(self, taken: list[tuple[_Request, int]]) -> list[list[tuple[_Request, int]]]:
        """Length-sorted batches: padded size (rows x longest) within max_batch_tokens, at most
        max_batch_rows rows, and a new batch once padding would exceed max_padding of the real
        tokens (when the batch already has min_batch_rows rows) -- padding is wasted compute."""
        taken = sorted(taken, key=lambda ri: len(ri[0].items[ri[1]]))
        chunks: list[list[tuple[_Request, int]]] = []
        cur: list[tuple[_Request, int]] = []
        real = 0
        for ri in taken:
            n = len(ri[0].items[ri[1]])
            padded = (len(cur) + 1) * n
            if cur and (
                padded > self.max_batch_tokens
                or len(cur) >= self.max_batch_rows
                or (len(cur) >= self.min_batch_rows and padded > self.max_padding * (real + n))
            ):
                chunks.append(cur)
                cur, real = [], 0
            cur.append(ri)
            real += n
        if cur:
            chunks.append(cur)
        return chunks

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for req in self._pending:
                        req.future.cancel()
                    return
                self._drop_dead()
                if not self._pending:
                    continue
                key = self._pending[0].key
                taken = self._take_round()
            for chunk in self._chunks(taken):
                chunk = [(r, i) for r, i in chunk if not r.future.done()]
                if not chunk:
                    continue
                self._run_chunk(key, chunk)

    def _run_chunk(self, key: ForwardSpec, chunk: list[tuple[_Request, int]]) -> None:
        items = [r.items[i] for r, i in chunk]
        try:
            out = self._run(key, items)  # (B, H)
        except Exception as exc:  # delivered to every caller in the batch
            log.exception("embedding batch of %d failed", len(items))
            for req in {r for r, _ in chunk}:
                if not req.future.done():
                    _settle(req.future, exc=exc)
            return
        tokens, padded = sum(len(e) for e in items), len(items) * max(len(e) for e in items)
        self.stats.batches += 1
        self.stats.texts += len(items)
        self.stats.tokens += tokens
        self.stats.padded_tokens += padded
        self.telemetry.embed_batch(len(items), tokens, padded)
        # `out` is a (B, ...) tensor, or a tuple of them (dense vectors with sparse ids and weights).
        parts = out if isinstance(out, tuple) else None
        for b, (req, i) in enumerate(chunk):
            req.rows[i] = tuple(p[b] for p in parts) if parts is not None else out[b]
            req.done += 1
            if req.done == len(req.items) and not req.future.done():
                if parts is not None:
                    result: Any = tuple(torch.stack(col) for col in zip(*req.rows))
                else:
                    result = torch.stack(req.rows)  # type: ignore[arg-type]
                _settle(req.future, result)
