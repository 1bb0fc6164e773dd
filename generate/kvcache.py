"""KV-cache rollback after tree verification: keep the cached prefix plus the accepted path only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def full_cache() -> Any:
    """A KV cache that keeps every position on every layer. The one a model builds for itself keeps
    only the last `sliding_window` positions on sliding-window layers (Mistral, Gemma 2, Qwen2 with
    `use_sliding_window`), which rollback by absolute position cannot crop; here those layers still
    see only their window, through the attention mask (HF's own for plain steps, `tree_mask` for trees)."""
    from transformers import DynamicCache

    return DynamicCache()


def tree_mask(
    allowed: torch.Tensor, q_pos: torch.Tensor, config: Any, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The `attention_mask` argument for a forward with an explicit mask over a cached prefix: `allowed`
    (1, 1, L, P + L) bool, made additive; on sliding-window layers also cut to the window, a query at
    position p seeing keys at positions > p - sliding_window (HF's rule). q_pos (L,): the new tokens'
    sequence positions; the keys are the prefix's 0..P-1 followed by those tokens.
    -> one mask, or {layer type: mask} for a model that mixes full and sliding layers."""

    def additive(a: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(a.shape, dtype=dtype, device=a.device)
        return m.masked_fill_(~a, torch.finfo(dtype).min)  # eager and sdpa alike

    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"])
    if not window or "sliding_attention" not in types or int(q_pos.max()) < window:  # the first key is position 0
        return additive(allowed)
    prefix_len = allowed.shape[-1] - q_pos.shape[0]
    k_pos = torch.cat([torch.arange(prefix_len, device=q_pos.device), q_pos])  # (P + L,)
    inside = allowed & ((q_pos[:, None] - k_pos[None, :]) < window)  # (L, K) broadcast over (1, 1, L, K)
    if types == {"sliding_attention"}:
        return additive(inside)
    return {"full_attention": additive(allowed), "sliding_attention": additive(inside)}


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
