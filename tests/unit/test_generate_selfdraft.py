"""Early-exit self-drafting: the chain decoded on the shared KV cache equals a fresh truncated forward,
the cache is left as it was, and drafts from it keep speculative output identical to plain decoding."""

from __future__ import annotations

import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.backbone.compat import output_cache
from lodestar.errors import InvalidInput
from lodestar.generate.decoder import DecoderConfig, SpeculativeDecoder
from lodestar.generate.drafter import DraftConfig
from lodestar.generate.kvcache import cache_length
from lodestar.generate.selfdraft import early_exit_chain, truncated
from lodestar.generate.types import GenerationParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [11, 200, 3000, 45, 987, 6, 71]


def prefill(bb: Backbone, ids: list[int]):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        out = bb.model(input_ids=torch.tensor([ids]), use_cache=True)
    return output_cache(out)


def fresh_chain(bb: Backbone, ids: list[int], layers: int, n: int) -> list[int]:
    """Reference: greedy from the first `layers` layers, the whole context recomputed each token."""
    head = bb.model.get_output_embeddings()
    ids = list(ids)
    chain = []
    with torch.inference_mode(), truncated(bb.decoder, layers):
        for _ in range(n):
            hidden = bb.decoder(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state
            tok = int(torch.argmax(head(hidden[0, -1])).item())
            chain.append(tok)
            ids.append(tok)
    return chain


@pytest.mark.parametrize("layers", [1, 2])
def test_chain_on_the_shared_cache_equals_a_fresh_truncated_forward(tiny_backbone: Backbone, layers: int) -> None:
    bb = tiny_backbone
    prefix, pending = PROMPT[:-1], PROMPT[-1]
    cache = prefill(bb, prefix)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    chain = early_exit_chain(bb, cache, pending, len(prefix), layers, 5)
    assert chain == fresh_chain(bb, PROMPT, layers, 5)
    assert cache_length(cache) == len(prefix)
    for layer, (k, v) in zip(cache.layers, before):  # every layer as it was, the early ones cropped back
        torch.testing.assert_close(layer.keys, k)
        torch.testing.assert_close(layer.values, v)
    assert len(bb.layers) == bb.num_layers  # the decoder got its layers back


def test_full_depth_chain_is_plain_greedy(tiny_backbone: Backbone) -> None:
    bb = tiny_backbone
    cache = prefill(bb, PROMPT[:-1])
    chain = early_exit_chain(bb, cache, PROMPT[-1], len(PROMPT) - 1, bb.num_layers, 6)
    plain = SpeculativeDecoder(bb, config=None).generate(PROMPT, GenerationParams(max_new_tokens=7, speculative=False))
    assert chain == plain.token_ids[1:]


def test_self_drafting_keeps_output_identical(tiny_backbone: Backbone) -> None:
    dec = SpeculativeDecoder(tiny_backbone)
    prompts = ["The quick brown fox", "one two three four one two"]
    drafted = 0
    for prompt in prompts:
        plain = dec.generate(prompt, GenerationParams(max_new_tokens=30, speculative=False))
        for layers in (1, tiny_backbone.num_layers - 1):
            spec = dec.generate(prompt, GenerationParams(max_new_tokens=30, self_draft_layers=layers))
            assert spec.token_ids == plain.token_ids, (prompt, layers)
            drafted += spec.stats.draft_tokens
        a = dec.generate(prompt, GenerationParams(max_new_tokens=20, temperature=0.8, seed=3, self_draft_layers=1))
        b = dec.generate(prompt, GenerationParams(max_new_tokens=20, temperature=0.8, seed=3, self_draft_layers=1))
        assert a.token_ids == b.token_ids
    assert drafted > 0


def test_real_model_self_drafting_is_lossless(backbone: Backbone) -> None:
    dec = SpeculativeDecoder(backbone)
    prompt = "def fib(n):\n    if n < 2:\n        return n\n"
    plain = dec.generate(prompt, GenerationParams(max_new_tokens=20, speculative=False))
    spec = dec.generate(prompt, GenerationParams(max_new_tokens=20, self_draft_layers=backbone.num_layers // 2))
    assert spec.token_ids == plain.token_ids


def test_layers_out_of_range_name_the_limit(tiny_backbone: Backbone) -> None:
    dec = SpeculativeDecoder(tiny_backbone)
    n = tiny_backbone.num_layers
    with pytest.raises(InvalidInput, match=rf"self_draft_layers must be in 0..{n - 1}"):
        dec.generate("hi", GenerationParams(self_draft_layers=n))


def test_early_exit_chain_reaches_the_tree(tiny_backbone: Backbone) -> None:
    """With no datastore and no n-gram of the context to repeat, a draft can only come from the early exit.

    The prompt is chosen so that its first greedy token does not occur in it: then the first decode step
    has no context match, and with three tokens to write that step is the only one that drafts.
    """
    # The fixed cost table, not one learned from this machine's timings: measured costs can make the
    # tree pruning drop a one-chain draft on a slow or busy machine, and the test asserts that one drafts.
    fixed = DecoderConfig(draft=DraftConfig(learn_cost=False), calibrate_cost=False)
    dec = SpeculativeDecoder(tiny_backbone, config=fixed)
    plain = GenerationParams(max_new_tokens=1, speculative=False)
    prompts = ([5, 900, 33, 1200, 77], [11, 200, 3000, 45], [17, 4000, 256, 8, 90, 1500], [123, 4567, 89])
    prompt = next((p for p in prompts if dec.generate(p, plain).token_ids[0] not in p), None)
    assert prompt is not None, "every candidate prompt's first greedy token repeats a prompt token"
    params = GenerationParams(max_new_tokens=3)
    none = dec.generate(prompt, params, datastore=None)
    early = dec.generate(
        prompt, GenerationParams(max_new_tokens=3, self_draft_layers=tiny_backbone.num_layers - 1), datastore=None
    )
    assert early.token_ids == none.token_ids
    assert none.stats.draft_tokens == 0
    assert early.stats.draft_tokens > 0
    longer = [
        dec.generate(prompt, GenerationParams(max_new_tokens=12, self_draft_layers=n), datastore=None).token_ids
        for n in (0, tiny_backbone.num_layers - 1)
    ]
    assert longer[0] == longer[1]
