"""KV rollback after tree verification: the cache keeps the prefix plus the accepted path, exactly as
if only the path had been fed, and decoding continues from it."""

from __future__ import annotations

import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.backbone.compat import cache_kwargs, output_cache
from lodestar.generate.decoder import SpeculativeDecoder
from lodestar.generate.kvcache import cache_length, keep_path
from lodestar.generate.tree import flatten

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prefill(bb: Backbone, ids: list[int]):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        out = bb.model(input_ids=torch.tensor([ids]), use_cache=True)
    return output_cache(out), out.logits[0]


def test_tree_forward_and_rollback_match_feeding_the_path(tiny_backbone: Backbone) -> None:
    bb = tiny_backbone
    dec = SpeculativeDecoder(bb)
    prompt = [11, 200, 3000, 45, 987, 6]
    cache, _ = prefill(bb, prompt)
    P = cache_length(cache)
    # root(pending 77) -> {a=5 -> c=7, b=6 -> d=8 -> e=9}; the accepted path is 0 -> b -> d (not contiguous)
    tree = flatten([77, 5, 6, 7, 8, 9], [-1, 0, 0, 1, 2, 4])
    logits = dec._forward_tree(tree, cache, P)  # (N, V)
    assert logits.shape[0] == tree.size
    assert cache_length(cache) >= P + tree.size  # padded rows included until rollback
    path = [0, 2, 4]
    with torch.inference_mode():
        keep_path(cache, P, path)
    assert cache_length(cache) == P + 3

    ref_cache, ref_logits = prefill(bb, prompt + [77, 6, 8])
    torch.testing.assert_close(logits[path], ref_logits[-3:], atol=1e-4, rtol=1e-4)
    for layer, ref in zip(cache.layers, ref_cache.layers):
        torch.testing.assert_close(layer.keys, ref.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.values, ref.values, atol=1e-5, rtol=1e-4)
    # Decoding goes on from the rolled-back cache as from the reference one.
    nxt = dec._forward_one(123, cache)
    with torch.inference_mode():
        ref_next = bb.model(
            input_ids=torch.tensor([[123]]), **cache_kwargs(bb.model, ref_cache), use_cache=True
        ).logits[0, -1]
    torch.testing.assert_close(nxt, ref_next, atol=1e-4, rtol=1e-4)


def test_chain_path_is_a_crop(tiny_backbone: Backbone) -> None:
    cache, _ = prefill(tiny_backbone, [1, 2, 3, 4])
    before = [layer.keys.clone() for layer in cache.layers]
    with torch.inference_mode():
        tiny_backbone.model(
            input_ids=torch.tensor([[5, 6, 7]]), **cache_kwargs(tiny_backbone.model, cache), use_cache=True
        )
        keep_path(cache, 4, [0, 1])
    assert cache_length(cache) == 6
    for layer, old in zip(cache.layers, before):
        torch.testing.assert_close(layer.keys[:, :, :4], old)


def test_tree_mask_cuts_sliding_layers_to_their_window() -> None:
    from types import SimpleNamespace

    from lodestar.generate.kvcache import tree_mask

    allowed = torch.ones(1, 1, 2, 6, dtype=torch.bool).tril(4)  # queries at positions 4, 5 over keys 0..5
    q = torch.tensor([4, 5])  # the keys: positions 0..3 cached, then 4 and 5
    blocked = torch.finfo(torch.float32).min
    plain = tree_mask(allowed, q, SimpleNamespace(), torch.float32)
    assert isinstance(plain, torch.Tensor) and (plain == 0).tolist() == allowed.tolist()
    assert isinstance(tree_mask(allowed, q, SimpleNamespace(sliding_window=8), torch.float32), torch.Tensor)  # inside
    mistral = tree_mask(allowed, q, SimpleNamespace(sliding_window=3), torch.float32)
    assert isinstance(mistral, torch.Tensor)
    assert (mistral[0, 0] == 0).tolist() == [
        [False, False, True, True, True, False],
        [False, False, False, True, True, True],
    ]
    assert mistral[0, 0, 0, 0] == blocked
    mixed = tree_mask(
        allowed,
        q,
        SimpleNamespace(sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
        torch.float32,
    )
    assert isinstance(mixed, dict) and torch.equal(mixed["full_attention"], plain)
    assert torch.equal(mixed["sliding_attention"], mistral)
    no_sliding = SimpleNamespace(sliding_window=3, layer_types=["full_attention"])  # Qwen2 without use_sliding_window
    assert torch.equal(tree_mask(allowed, q, no_sliding, torch.float32), plain)
