"""Self-drafting by early exit: the backbone's first layers, its final norm and its LM head write a
short greedy chain; the full model verifies it with the other drafts (LayerSkip-style, training-free).

No second cache: for every verified token, the first `layers` layers' keys and values in the
request's KV cache are exactly what the truncated model would cache, so the chain is decoded on top
of that cache and those layers are cropped back to the verified prefix afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.backbone.compat import cache_kwargs
from lodestar.generate.kvcache import crop


@contextmanager
def truncated(decoder: Any, layers: int) -> Iterator[None]:
    """The decoder runs only its first `layers` layers inside the block (caller holds the model lock)."""
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(full)[:layers])
    try:
        yield
    finally:
        decoder.layers = full


def early_exit_chain(
    backbone: Backbone, cache: Any, pending: int, prefix_len: int, layers: int, tokens: int
) -> list[int]:
    """Greedy chain of `tokens` draft tokens after `pending` from the first `layers` layers.

    `cache` holds exactly `prefix_len` verified positions on every layer and is left so.
    """
    if not 1 <= layers <= backbone.num_layers:
        raise ValueError(f"early-exit layers must be in 1..{backbone.num_layers}; got {layers}")
    decoder = backbone.decoder
    head = backbone.model.get_output_embeddings()
    dev = backbone.device
    chain: list[int] = []
    tok = pending
    with backbone.lock, torch.inference_mode(), truncated(decoder, layers):
        try:
            for i in range(tokens):
                x = torch.tensor([[tok]], device=dev)  # (1, 1)
                pos = torch.tensor([[prefix_len + i]], device=dev)  # (1, 1)
                out = decoder(input_ids=x, position_ids=pos, **cache_kwargs(decoder, cache), use_cache=True)
                tok = int(torch.argmax(head(out.last_hidden_state[0, -1])).item())
                chain.append(tok)
        finally:
            crop(cache, prefix_len, layers)
    return chain
