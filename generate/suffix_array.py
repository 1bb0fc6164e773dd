"""Suffix arrays over token arrays: numpy prefix doubling to build, binary search to find a pattern.

Documents are concatenated with SEPARATOR (-1) between them. It sorts before every token, so it
never matches a query pattern and continuations are cut at it.
"""

from __future__ import annotations

import numpy as np

SEPARATOR = -1


def build_suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of `tokens` (int32, SEPARATOR allowed) by prefix doubling.

    Each round sorts suffixes by (rank of first k tokens, rank of the next k tokens) with one numpy
    argsort, so the cost is O(n log n) per round and ceil(log2(longest repeat)) + 1 rounds.
    """
    n = int(tokens.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n >= 3_000_000_000:
        raise ValueError(f"a segment holds at most 3e9 tokens; got {n}")
    _, rank = np.unique(tokens, return_inverse=True)  # (n,) dense ranks of single tokens
    rank = rank.astype(np.int64).reshape(-1)
    k = 1
    while True:
        second = np.zeros(n, dtype=np.int64)  # 0 = past the end, smaller than every rank + 1
        second[: max(n - k, 0)] = rank[k:] + 1
        key = rank * (n + 1) + second  # (n,) < n * (n + 1) + n: fits int64 for n < 3e9
        sa = np.argsort(key)
        sorted_key = key[sa]
        bumps = np.empty(n, dtype=np.int64)
        bumps[0] = 0
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=bumps[1:], casting="unsafe")
        new_rank_sorted = np.cumsum(bumps)
        if new_rank_sorted[-1] == n - 1:  # every suffix has a distinct rank: sorted
            return sa
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = new_rank_sorted
        k *= 2


def _prefix(tokens: np.ndarray, start: int, m: int) -> tuple[int, ...]:
    return tuple(tokens[start : start + m].tolist())


def find_range(tokens: np.ndarray, sa: np.ndarray, pattern: tuple[int, ...]) -> tuple[int, int]:
    """-> [lo, hi): the suffix-array rows whose suffix starts with `pattern` (empty when lo == hi).

    Python tuple order matches the array's order: SEPARATOR (-1) is smallest and a suffix that ends
    early sorts before its extensions.
    """
    m = len(pattern)
    lo, hi = 0, int(sa.shape[0])
    while lo < hi:  # first row whose m-prefix >= pattern
        mid = (lo + hi) // 2
        if _prefix(tokens, int(sa[mid]), m) < pattern:
            lo = mid + 1
        else:
            hi = mid
    start, hi = lo, int(sa.shape[0])
    while lo < hi:  # first row whose m-prefix > pattern
        mid = (lo + hi) // 2
        if _prefix(tokens, int(sa[mid]), m) <= pattern:
            lo = mid + 1
        else:
            hi = mid
    return start, lo
