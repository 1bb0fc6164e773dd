"""Continuous batcher: each time the backbone frees, the next forward is formed from everything queued.

Like text-embeddings-inference's queue, nothing is fixed in advance: a request that arrives while a
forward runs is a candidate for the very next one. The candidates (queued texts of the oldest
request's forward kind, FIFO, up to a window) are sorted by length and cut into token-bounded
batches (padding costs as much as a real token on CPU, so a long text does not pad many short
ones); the batch that holds most of the oldest request's texts runs, the rest stay queued and meet
the next arrivals. Each request gets its rows back in its own order, packed with one index copy
per request per batch. The model runs on the batcher's own thread, never on the gRPC event loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from lodestar.embed.forward import PACK_MAX_TOKENS, pack_rows, packable
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


Taken = list[tuple["_Request", int]]  # (request, index of one of its texts)


@dataclass(eq=False)
class _Request:
    key: ForwardSpec
    items: list[Encoded]
    deadline: float | None  # time.monotonic() by which the work must start
    future: Future = field(default_factory=Future)
    left: list[int] = field(default_factory=list)  # indices of the texts not yet dispatched
    done: int = 0  # texts whose rows are in `out`
    passed: int = 0  # forwards in a row that ran none of its texts
    out: tuple[torch.Tensor, ...] | None = None  # the result's parts, filled batch by batch

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def fill(self, parts: tuple[torch.Tensor, ...], rows: list[int], idx: list[int]) -> None:
        """Copy batch rows `rows` of every part to this request's positions `idx` (one copy per part)."""
        if self.out is None:
            n = len(self.items)
            self.out = tuple(torch.empty((n, *p.shape[1:]), dtype=p.dtype) for p in parts)
        r, i = torch.tensor(rows), torch.tensor(idx)
        for dst, src in zip(self.out, parts):
            dst.index_copy_(0, i, src.index_select(0, r))
        self.done += len(idx)


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    tokens: int = 0  # real tokens
    padded_tokens: int = 0  # tokens run, padding included
    dropped: int = 0  # requests dropped for a passed deadline or cancellation
    packed: int = 0  # forwards that ran their texts packed into shared rows (embed/forward.py)
    batch_sizes: dict[int, int] = field(default_factory=dict)  # texts per forward -> forwards (a plain
    # dict: dataclasses.asdict rebuilds a Counter from its items wrongly)


class Batcher:
    def __init__(
        self,
        run: RunBatch,
        max_batch_tokens: int = 16384,
        max_queued_texts: int = 8192,
        max_window_texts: int = 4096,
        # 64: the in-process sweep's best length-sorted batch of short texts in five modes of six on
        # the AVX512-BF16 CPU (echo: 32); 128 ran 2-44% slower per token than 64 there (docs/results.md)
        max_batch_rows: int = 64,
        min_batch_rows: int = 16,
        min_batch_tokens: int = 1024,
        max_padding: float = 1.25,
        max_passes: int = 2,
        packs: Callable[[ForwardSpec], bool] = lambda spec: False,
    ) -> None:
        self._run = run
        # whether a kind of forward runs its texts packed into shared rows (embed/forward.py): then
        # padding costs next to nothing and a batch is cut by real tokens and rows only
        self._packs = packs
        self.max_passes = max_passes  # forwards that may pass over the oldest request before it goes next
        self.max_batch_rows = max_batch_rows
        self.min_batch_rows = min_batch_rows
        # or real tokens, for long texts: a forward's fixed cost (about 50 ms on a 2-core CPU, what
        # ~35 tokens cost) is small beside 1,024 tokens, so a few long texts need not pay padding
        self.min_batch_tokens = min_batch_tokens
        self.max_padding = max_padding
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_texts = max_queued_texts
        self.max_window_texts = max_window_texts  # queued texts one scheduling step looks at
        self._pending: deque[_Request] = deque()
        self._queued = 0  # texts not yet dispatched
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self.telemetry: Telemetry = NOOP  # the server sets its metrics here
        self._thread = threading.Thread(target=self._loop, name="lodestar-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: ForwardSpec, items: list[Encoded], timeout: float | None = None) -> Future:
        """Queue a request; its future resolves to a (len(items), H) float32 tensor (or a tuple of
        per-text tensors when the forward returns several parts)."""
        req = _Request(key=key, items=items, deadline=None if timeout is None else time.monotonic() + timeout)
        req.left = list(range(len(items)))
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
            if req.future.done() or req.expired(now):  # done: cancelled, or failed in an earlier batch
                self._queued -= len(req.left)
                if req.future.cancelled() or not req.future.done():
                    self.stats.dropped += 1
                if not req.future.done():
                    _settle(req.future, exc=DeadlineExceeded("deadline passed while the request was queued"))
            else:
                alive.append(req)
        self._pending = alive

    def _window(self) -> Taken:
        """Queued texts of the oldest request's forward kind, FIFO across requests, up to max_window_texts."""
        key = self._pending[0].key
        same = (req for req in self._pending if req.key == key)
        pairs = ((req, i) for req in same for i in req.left)
        return list(itertools.islice(pairs, self.max_window_texts))

    def _next_batch(self) -> Taken:
        """The batch to run now: of the window's length-sorted batches, the fullest (small batches
        waste the per-forward cost; their texts may meet similar ones arriving meanwhile), unless
        the oldest request has been passed over max_passes times: then the one holding most of its
        texts (nothing starves). Its texts leave the queue."""
        head = self._pending[0]
        chunks = self._chunks(self._window(), self._packs(head.key))
        if head.passed >= self.max_passes:
            batch = max(chunks, key=lambda c: sum(r is head for r, _ in c))  # first of the ties: the shortest
        else:
            batch = max(chunks, key=len)
        for req in self._pending:
            req.passed += 1  # reset below for those this batch serves
        taken: dict[_Request, set[int]] = {}
        for req, i in batch:
            taken.setdefault(req, set()).add(i)
        for req, idx in taken.items():
            req.left = [i for i in req.left if i not in idx]
            req.passed = 0
            if not req.left:
                self._pending.remove(req)
        self._queued -= len(batch)
        return batch

    def _chunks(self, taken: Taken, packed: bool = False) -> list[Taken]:
        """Length-sorted batches: padded size (rows x longest) within max_batch_tokens, at most
        max_batch_rows rows, and a new batch once padding would exceed max_padding of the real
        tokens (when the batch already has min_batch_rows rows or min_batch_tokens real tokens) --
        padding is wasted compute, on CPU as dear as a real token. A `packed` forward of short texts
        (up to PACK_MAX_TOKENS: embed/forward.py) pads next to nothing: those are cut by real tokens
        and max_batch_rows texts only, and the first longer text starts a batch of its own kind."""
        taken = sorted(taken, key=lambda ri: len(ri[0].items[ri[1]]))
        chunks: list[Taken] = []
        cur: Taken = []
        real = 0
        cur_short = False  # whether `cur` holds packed short texts
        for ri in taken:
            n = len(ri[0].items[ri[1]])
            short = packed and n <= PACK_MAX_TOKENS  # sorted: the short ones come first
            padded = real + n if short else (len(cur) + 1) * n
            if cur and (
                padded > self.max_batch_tokens
                or len(cur) >= self.max_batch_rows
                or cur_short != short
                or (
                    not short
                    and (len(cur) >= self.min_batch_rows or real >= self.min_batch_tokens)
                    and padded > self.max_padding * (real + n)
                )
            ):
                chunks.append(cur)
                cur, real = [], 0
            cur.append(ri)
            real += n
            cur_short = short
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
                batch = self._next_batch()
            self._run_batch(key, batch)

    def _run_batch(self, key: ForwardSpec, batch: Taken) -> None:
        items = [r.items[i] for r, i in batch]
        try:
            out = self._run(key, items)  # (B, H), or a tuple of (B, ...) parts (dense, sparse ids, weights)
        except Exception as exc:  # delivered to every caller in the batch
            log.exception("embedding batch of %d failed", len(items))
            for req in {r for r, _ in batch}:
                _settle(req.future, exc=exc)
            return
        lengths = [len(e) for e in items]
        if self._packs(key) and packable(lengths):  # the forward's grid: packed rows, as long as the fullest
            _, _, fill = pack_rows(lengths)
            tokens, padded = sum(lengths), len(fill) * max(fill)
            self.stats.packed += 1
        else:
            tokens, padded = sum(lengths), len(items) * max(lengths)
        self.stats.batches += 1
        self.stats.texts += len(items)
        self.stats.tokens += tokens
        self.stats.padded_tokens += padded
        self.stats.batch_sizes[len(items)] = self.stats.batch_sizes.get(len(items), 0) + 1
        self.telemetry.embed_batch(len(items), tokens, padded)
        parts = out if isinstance(out, tuple) else (out,)
        by_req: dict[_Request, tuple[list[int], list[int]]] = {}
        for b, (req, i) in enumerate(batch):
            rows, idx = by_req.setdefault(req, ([], []))
            rows.append(b)
            idx.append(i)
        for req, (rows, idx) in by_req.items():
            if req.future.done():  # cancelled, or failed in an earlier batch
                continue
            req.fill(parts, rows, idx)
            if req.done == len(req.items) and req.out is not None:
                _settle(req.future, req.out if isinstance(out, tuple) else req.out[0])
