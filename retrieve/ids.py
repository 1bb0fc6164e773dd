"""Integer-id helpers shared by the dense and sparse indexes."""

from __future__ import annotations

from typing import Any

import numpy as np

from lodestar.errors import InvalidInput


def as_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """Any integer sequence as a contiguous (N,) int64 array."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidInput(f"{what} must be a 1-D array of integers; got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(f"{what} must be integers; got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def member(sorted_keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) bool: which of `ids` are in `sorted_keys` (binary search, no full scan)."""
    if sorted_keys.size == 0 or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    where = np.searchsorted(sorted_keys, ids)
    where[where == sorted_keys.size] = 0
    return sorted_keys[where] == ids
