"""Admission control measured in work, not requests: a budget per kind of work (texts to embed and
their tokens, for Embed and Search's queries; documents for Upsert), checked when a request arrives.

Past the budget a request is refused at once with RESOURCE_EXHAUSTED naming the limit and a retry
hint (`retry-after-ms`); a request whose deadline would pass before the work ahead of it is done is
refused too, instead of queued to time out.

The wait is estimated in seconds over every budget that feeds the same resource (a `Backlog`: the
backbone, which Embed's texts, Search's queries and Upsert's documents all queue for), each budget's
units in flight times its measured seconds per unit. A finished request corrects its own budget's
seconds per unit by how far its latency was from that estimate of the queue ahead plus its own work,
so a machine slower or busier than the estimates shows in every kind's next admissions. A budget
outside a backlog waits only for its own kind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from lodestar.errors import InvalidInput, Overloaded

MIN_RETRY_MS = 100
BYTES_PER_TOKEN = 4  # byte-level BPE (SmolLM2, Llama): about 4 UTF-8 bytes of English text per token
SMOOTHING = 0.2  # weight of the newest sample in the seconds-per-unit average
# Admit a request only when the work ahead and its own are estimated to end within this share of its
# deadline. Admitting up to the deadline itself fills the queue to the edge, and the estimate runs
# short under sustained overload: the batcher shares the backbone between the requests queued, so
# work admitted after a request slows it too. Traced on the overload benchmark (2026-12-07), the
# time taken over the estimate had a median of 1.15 and a 95th percentile of 1.24-1.34; at 0.8, 9%
# of admitted calls still missed a 30 s deadline.
DEADLINE_HEADROOM = 0.7


def retry_ms(seconds: float) -> int:
    """A retry hint for work estimated to drain in `seconds`: at least MIN_RETRY_MS."""
    return max(MIN_RETRY_MS, int(1000 * seconds))


class Backlog:
    """The budgets whose work queues for one resource: the seconds of work queued on it is the sum of
    theirs. Reads are unlocked: a Python int or float is read whole, and an estimate may be a moment
    stale."""

    def __init__(self) -> None:
        self.budgets: list[Budget] = []

    def seconds(self) -> float:
        return sum(b.in_flight * (b.per_unit or 0.0) for b in self.budgets)

    def in_flight(self) -> bool:
        return any(b.in_flight for b in self.budgets)


class Budget:
    """Units of work in flight at once, at most `limit` (the setting named `setting`); with a
    `backlog`, the deadline check waits for every budget in it."""

    def __init__(self, unit: str, limit: int, setting: str, backlog: Backlog | None = None) -> None:
        self.unit = unit
        self.limit = limit
        self.setting = setting
        self.in_flight = 0
        self.per_unit: float | None = None  # measured seconds per unit of work, None until a request finished
        self.refused = 0
        self._lock = threading.Lock()
        self.backlog = backlog or Backlog()
        self.backlog.budgets.append(self)

    def seed(self, per_unit: float) -> None:
        """A first estimate of seconds per unit (the warm-up forward), until finished requests measure it."""
        with self._lock:
            if self.per_unit is None and per_unit > 0:
                self.per_unit = per_unit

    def wait_s(self) -> float:
        """Estimated seconds before a request arriving now would start: the work queued ahead of it
        on the resource this budget's work shares."""
        return self.backlog.seconds()

    def _retry_ms(self, need: int) -> int:
        """When roughly `need` units will have drained."""
        return retry_ms(need * (self.per_unit or 0.0))

    @contextmanager
    def admit(self, n: int, time_remaining: float | None) -> Iterator[None]:
        """Hold `n` units for the block, or raise Overloaded (InvalidInput when `n` alone is over the limit)."""
        with self._lock:
            if n > self.limit:
                raise InvalidInput(
                    f"{n} {self.unit} in one request; this server takes at most {self.setting}={self.limit}: split the request"
                )
            if self.in_flight + n > self.limit:
                self.refused += 1
                retry = self._retry_ms(self.in_flight + n - self.limit)
                raise Overloaded(
                    f"server over capacity: {self.in_flight} {self.unit} in flight, this request's {n} would pass "
                    f"{self.setting}={self.limit}; retry after about {retry} ms",
                    retry_after_ms=retry,
                )
            wait = self.wait_s()
            own = n * (self.per_unit or 0.0)
            # nothing in flight: always admitted, so a wrong estimate cannot lock every request out
            queued = self.backlog.in_flight()
            if (
                time_remaining is not None
                and self.per_unit is not None
                and queued
                and wait + own > DEADLINE_HEADROOM * time_remaining
            ):
                self.refused += 1
                retry = retry_ms(wait)
                raise Overloaded(
                    f"the work queued ahead (about {wait:.1f} s; {self.in_flight} {self.unit} of it this request's "
                    f"kind) and this request's own (about {own:.1f} s) would outlast its deadline "
                    f"({max(time_remaining, 0):.1f} s left; admitted when expected within {DEADLINE_HEADROOM:.0%} of it); "
                    f"retry after about {retry} ms or with a longer deadline",
                    retry_after_ms=retry,
                )
            ahead, per, estimate = self.in_flight, self.per_unit, wait + own
            self.in_flight += n
        start = time.monotonic()
        finished = False
        try:
            yield
            finished = True
        finally:
            with self._lock:
                self.in_flight -= n
                if finished:
                    took = time.monotonic() - start
                    # scale this kind's seconds per unit by how far the estimate of the queue ahead plus
                    # this request's own work was from what it took; unmeasured, an average per unit
                    sample = per * took / estimate if per and estimate > 0 else took / max(1, ahead + n)
                    old = self.per_unit
                    self.per_unit = sample if old is None else (1 - SMOOTHING) * old + SMOOTHING * sample


def estimate_tokens(texts: Iterable[str], max_tokens: int) -> int:
    """Tokens `texts` will take, estimated at arrival without the tokenizer: a text's UTF-8 bytes over
    BYTES_PER_TOKEN, plus one, capped at `max_tokens` (longer texts are truncated, or refused)."""
    return sum(min(max_tokens, len(t.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN + 1) for t in texts)
