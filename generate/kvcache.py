"""KV-cache rollback after tree verification: keep the cached prefix plus the accepted path only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def crop(cache: Any, length: int, layers: int | None = None) -> None:
    """Cut every cache layer (or only the first `layers`) back to its first `length` positions."""
    for layer in list(cache.layers)[:layers]:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys[:, :, :length]
        layer.values = layer.values[:, :, :length]


def keep_path(cache: Any, prefix_len: int, path: Sequence[int]) -> None:
    """Shrink every layer to rows [0, prefix_len) + [prefix_len + i for i in path], in that order.

    The verified tree's rows sit after the prefix in tree order; the accepted path (root first) is
    moved to the front of that block and the rest dropped, so the cache reads as if only the path
    had been fed. A path that is already 0..k-1 (a chain) needs only a crop.
    """
    k = len(path)
    if list(path) != list(range(k)):
        idx = torch.as_tensor(path, dtype=torch.long) + prefix_len  # (k,)
        for layer in cache.layers:
            keys, values = layer.keys, layer.values  # (B, H_kv, prefix_len + N, D)
            if keys is None or keys.numel() == 0:
                continue
            idx_d = idx.to(keys.device)
            keys[:, :, prefix_len : prefix_len + k] = keys.index_select(2, idx_d)  # (B, H_kv, k, D)
            values[:, :, prefix_len : prefix_len + k] = values.index_select(2, idx_d)
    crop(cache, prefix_len + k)
