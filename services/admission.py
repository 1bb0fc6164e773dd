"""Admission control measured in work, not requests: a budget per kind of work (texts to embed and
their tokens, for Embed and Search's queries; documents for Upsert), checked when a request arrives.

Past the budget a request is refused at once with RESOURCE_EXHAUSTED naming the limit and a retry
hint (`retry-after-ms`); a request whose deadline would pass before the work ahead of it is done is
refused too, instead of queued to time out. The wait is estimated from the seconds per unit the
budget measured (an average over finished requests: their time over the work they waited behind
plus their own).
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


class Budget:
    """Units of work in flight at once, at most `limit` (the setting named `setting`)."""

    def __init__(self, unit: str, limit: int, setting: str) -> None:
        self.unit = unit
        self.limit = limit
        self.setting = setting
        self.in_flight = 0
        self.per_unit: float | None = None  # measured seconds per unit of work, None until a request finished
        self.refused = 0
        self._lock = threading.Lock()

    def seed(self, per_unit: float) -> None:
        """A first estimate of seconds per unit (the warm-up forward), until finished requests measure it."""
        with self._lock:
            if self.per_unit is None and per_unit > 0:
                self.per_unit = per_unit

    def wait_s(self) -> float:
        """Estimated seconds before a request arriving now would start."""
        return self.in_flight * (self.per_unit or 0.0)

    def _retry_ms(self, need: int) -> int:
        """When roughly `need` units will have drained."""
        return max(MIN_RETRY_MS, int(1000 * need * (self.per_unit or 0.0)))

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
            done = wait + n * (self.per_unit or 0.0)  # the queue ahead, then this request's own work
            # nothing in flight: always admitted, so a wrong estimate cannot lock every request out
            if time_remaining is not None and self.per_unit is not None and self.in_flight and done > time_remaining:
                self.refused += 1
                retry = self._retry_ms(self.in_flight)
                raise Overloaded(
                    f"the work queued ahead ({self.in_flight} {self.unit}, about {wait:.1f} s) and this request's "
                    f"own (about {done - wait:.1f} s) would outlast its deadline ({max(time_remaining, 0):.1f} s "
                    f"left); retry after about {retry} ms or with a longer deadline",
                    retry_after_ms=retry,
                )
            ahead = self.in_flight
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
                    sample = (time.monotonic() - start) / max(1, ahead + n)
                    old = self.per_unit
                    self.per_unit = sample if old is None else (1 - SMOOTHING) * old + SMOOTHING * sample


def estimate_tokens(texts: Iterable[str], max_tokens: int) -> int:
    """Tokens `texts` will take, estimated at arrival without the tokenizer: a text's UTF-8 bytes over
    BYTES_PER_TOKEN, plus one, capped at `max_tokens` (longer texts are truncated, or refused)."""
    return sum(min(max_tokens, len(t.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN + 1) for t in texts)
