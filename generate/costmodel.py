"""Relative cost of one forward of n new tokens on top of a KV cache, for sizing draft trees.

On a CPU this curve is far from flat and not even monotone: GEMM kernels are efficient when the row
count is a multiple of the SIMD width (16 rows can be cheaper than 10), so the decoder pads a
verification batch up to the cheapest length >= the tree, and the tree is sized against that
lower envelope: grow it while (1 + expected accepted tokens) / cost still improves.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lodestar.backbone.compat import cache_kwargs, output_cache
from lodestar.generate.kvcache import full_cache, tree_mask

# Measured on the 2-core development CPU (1 intra-op thread), SmolLM2-135M fp32, 300 cached tokens;
# index i = cost of a forward of i + 1 tokens relative to one token. Replace with `measure()`.
DEFAULT_TABLE: tuple[float, ...] = (
    1.00,
    1.15,
    1.25,
    1.62,
    1.79,
    1.73,
    2.16,
    2.37,
    2.22,
    2.88,
    2.59,
    2.67,
    2.87,
    3.03,
    2.99,
    2.15,
    2.19,
    2.47,
    2.25,
    2.18,
    2.39,
    2.27,
    2.73,
    2.31,
    2.33,
    2.38,
    2.61,
    2.38,
    2.69,
    2.63,
    2.66,
    2.59,
)


@dataclass(frozen=True)
class CostModel:
    """Forward cost by number of new tokens (1-based), with its padded lower envelope."""

    table: tuple[float, ...] = DEFAULT_TABLE

    def __post_init__(self) -> None:
        if not self.table or any(c <= 0 for c in self.table):
            raise ValueError("a cost table needs positive costs for 1..K tokens")

    @property
    def max_len(self) -> int:
        return len(self.table)

    def cost(self, n: int) -> float:
        """Measured cost of exactly n tokens (linear extrapolation past the table)."""
        if n <= self.max_len:
            return self.table[n - 1]
        return self.table[-1] * n / self.max_len

    def padded_length(self, n: int) -> int:
        """The cheapest forward length >= n (pad the batch to it: never slower than n itself)."""
        if n >= self.max_len:
            return n
        best = min(range(n, self.max_len + 1), key=lambda m: (self.table[m - 1], m))
        return best

    def envelope(self, n: int) -> float:
        """Cost of n tokens when padded optimally."""
        return self.cost(self.padded_length(n))


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for a device's queued work: CUDA calls return before their kernels finish, so a
    timer around a forward measures launches unless it waits; on the CPU, nothing."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(backbone: Any, max_len: int = 32, reps: int = 5, prefix_len: int = 256, seed: int = 0) -> CostModel:
    """Time forwards of 1..max_len tokens over a `prefix_len` cache (shuffled, interleaved; medians)."""
    model = backbone.model
    dev = backbone.device
    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (1, prefix_len), generator=gen).to(dev)  # (1, P)
    times: dict[int, list[float]] = {n: [] for n in range(1, max_len + 1)}
    order = list(range(1, max_len + 1))
    rng = random.Random(seed)
    sync = synchronizer(dev)
    with backbone.lock, torch.inference_mode():
        cache = output_cache(model(input_ids=ids, **cache_kwargs(model, full_cache()), use_cache=True))
        for _ in range(reps + 1):  # the first round warms kernels up and is dropped
            rng.shuffle(order)
            for n in order:
                x = torch.randint(0, vocab, (1, n), generator=gen).to(dev)  # (1, n)
                pos = torch.arange(prefix_len, prefix_len + n, device=dev)[None]  # (1, n)
                allowed = torch.ones(1, 1, n, prefix_len + n, dtype=torch.bool, device=dev)  # (1, 1, n, P + n): a chain
                allowed[0, 0, :, prefix_len:] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
                mask = tree_mask(allowed, pos[0], model.config, backbone.dtype)
                sync()
                t = time.perf_counter()
                if n == 1:
                    model(input_ids=x, **cache_kwargs(model, cache), use_cache=True)
                else:
                    model(
                        input_ids=x, attention_mask=mask, position_ids=pos, **cache_kwargs(model, cache), use_cache=True
                    )
                sync()
                times[n].append(time.perf_counter() - t)
                cache.crop(-n)
    base = statistics.median(times[1][1:])
    return CostModel(tuple(round(statistics.median(times[n][1:]) / base, 3) for n in range(1, max_len + 1)))


class OnlineCost:
    """A CostModel that learns from the forwards actually run: per length, the median of the last
    `window` timings over the median single-token time, falling back to the prior table until a
    length has `min_samples` timings. Tracks this machine, its load and the context lengths served."""

    def __init__(self, prior: CostModel, window: int = 24, min_samples: int = 4) -> None:
        self.prior = prior
        self.window = window
        self.min_samples = min_samples
        self._times: dict[int, deque[float]] = {}
        self._lock = threading.Lock()
        self._table = prior.table  # current estimate, rebuilt after each observation
        self._padded = _padded_lengths(self._table)

    @property
    def max_len(self) -> int:
        return len(self._table)

    @property
    def table(self) -> tuple[float, ...]:
        return self._table

    def observe(self, length: int, seconds: float) -> None:
        """Record one forward of `length` new tokens that took `seconds`."""
        if length < 1 or length > self.prior.max_len or seconds <= 0:
            return
        with self._lock:
            self._times.setdefault(length, deque(maxlen=self.window)).append(seconds)
            one = self._times.get(1)
            if one is None or len(one) < self.min_samples:
                return
            base = statistics.median(one)
            table = list(self.prior.table)
            for n, ts in self._times.items():
                if n > 1 and len(ts) >= self.min_samples:
                    table[n - 1] = max(1.0, statistics.median(ts) / base)
            self._table = tuple(table)
            self._padded = _padded_lengths(self._table)

    def cost(self, n: int) -> float:
        table = self._table
        return table[n - 1] if n <= len(table) else table[-1] * n / len(table)

    def padded_length(self, n: int) -> int:
        return self._padded[n - 1] if n <= len(self._padded) else n

    def envelope(self, n: int) -> float:
        return self.cost(self.padded_length(n))


def _padded_lengths(table: tuple[float, ...]) -> tuple[int, ...]:
    """For each n, the cheapest length >= n (ties: the shorter)."""
    out = []
    for n in range(1, len(table) + 1):
        out.append(min(range(n, len(table) + 1), key=lambda m: (table[m - 1], m)))
    return tuple(out)
