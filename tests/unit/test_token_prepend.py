"""Token Prepending changes exactly the hidden state it should: the placeholder's input to each layer
in [start, end] becomes the previous layer's last-token output, and nothing else moves.

Inspected with forward hooks on the tiny model's decoder layers. A forward hook registered with
kwargs sees the layer's input *after* the forward pre-hooks ran, i.e. what the layer really used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.embed.forward import embed_batch, hidden_states
from lodestar.embed.modes import Encoded, ForwardSpec, TokenPrepend
from lodestar.embed.types import EmbedOptions

TEXTS = ["Cats sleep.", "The committee postponed the vote on the bridge until spring."]


@contextmanager
def record_layers(backbone: Backbone) -> Iterator[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """Capture each decoder layer's effective input and its output: ({layer: (B, T, H)}, {...})."""
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles = []

    def make(idx: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            inputs[idx] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            outputs[idx] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    for i, layer in enumerate(backbone.layers):
        handles.append(layer.register_forward_hook(make(i), with_kwargs=True))
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def prepared(tiny_engine) -> list[Encoded]:  # type: ignore[no-untyped-def]
    items = tiny_engine.prepare(TEXTS, EmbedOptions(mode="token_prepend")).items
    assert all(e.placeholder is not None for e in items)
    assert len(items[0]) != len(items[1])  # a padded batch
    return items


def spec_for(start: int, end: int, output_layer: int = -1) -> ForwardSpec:
    return ForwardSpec(prepend=TokenPrepend(start, end, output_layer), output_layer=output_layer)


def test_placeholder_sits_before_the_text(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    (e,) = tiny_engine.prepare(["dog"], EmbedOptions(mode="token_prepend")).items
    head = list(tokenizer('This sentence : "', add_special_tokens=False)["input_ids"])
    assert e.placeholder == len(head)
    assert e.ids[: len(head)] == head
    assert e.ids[e.placeholder] == tiny_engine.inputs.placeholder_id
    assert e.ids[e.placeholder + 1 :] == list(
        tokenizer('dog" means in one word:"', add_special_tokens=False)["input_ids"]
    )
    assert (e.pool_start, e.pool_end) == (len(e) - 1, len(e))


@pytest.mark.parametrize(("start", "end"), [(1, 2), (0, 3), (2, 2)])
def test_only_the_placeholder_changes_and_only_inside_the_range(
    tiny_engine,
    tiny_backbone: Backbone,
    start: int,
    end: int,  # type: ignore[no-untyped-def]
) -> None:
    items = prepared(tiny_engine)
    spec = spec_for(start, end)
    with record_layers(tiny_backbone) as (inp, out):
        hidden_states(tiny_backbone, items, spec)
    embeds = tiny_backbone.decoder.embed_tokens(
        torch.tensor([e.ids[-1] for e in items])
    ).detach()  # (B, H): layer 0's "previous layer" is the embedding table
    n_layers = tiny_backbone.num_layers
    for i, e in enumerate(items):
        p, last = e.placeholder, len(e) - 1
        assert p is not None
        others = [j for j in range(len(e)) if j != p]
        for layer in range(n_layers):
            prev = out[layer - 1][i] if layer > 0 else None  # (T, H): the previous layer's output
            prev_last = prev[last] if prev is not None else embeds[i]
            if start <= layer <= end:
                # (a) the placeholder's input is the previous layer's last-token output, exactly
                torch.testing.assert_close(inp[layer][i, p], prev_last, atol=0, rtol=0)
            elif prev is not None:
                # (c) outside the range the placeholder flows through untouched
                torch.testing.assert_close(inp[layer][i, p], prev[p], atol=0, rtol=0)
            if prev is not None:
                # every other position is passed on unchanged, in every layer
                torch.testing.assert_close(inp[layer][i, others], prev[others], atol=0, rtol=0)


def test_positions_before_the_placeholder_are_untouched(tiny_engine, tiny_backbone: Backbone) -> None:  # type: ignore[no-untyped-def]
    items = prepared(tiny_engine)
    with record_layers(tiny_backbone) as (_, out_tp):
        h_tp, _ = hidden_states(tiny_backbone, items, spec_for(1, 2))
    with record_layers(tiny_backbone) as (_, out_plain):
        h_plain, _ = hidden_states(tiny_backbone, items, ForwardSpec())  # same ids, no hooks
    for i, e in enumerate(items):
        p = e.placeholder
        assert p is not None and p > 0
        # (b) causal attention: nothing before the placeholder can see it
        for layer in out_tp:
            torch.testing.assert_close(out_tp[layer][i, :p], out_plain[layer][i, :p], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(h_tp[i, :p], h_plain[i, :p], atol=1e-6, rtol=1e-5)
        # ... while the placeholder and everything after it (the pooled last token) moved
        assert not torch.allclose(h_tp[i, p], h_plain[i, p], atol=1e-4)
        assert not torch.allclose(h_tp[i, len(e) - 1], h_plain[i, len(e) - 1], atol=1e-4)


def test_output_differs_from_prompteol_with_placeholder(tiny_engine, tiny_backbone: Backbone) -> None:  # type: ignore[no-untyped-def]
    items = prepared(tiny_engine)
    with_tp = embed_batch(tiny_backbone, items, spec_for(1, 2))  # (B, H)
    without = embed_batch(tiny_backbone, items, ForwardSpec())  # same inputs, plain last token
    for i in range(len(items)):
        assert not torch.allclose(with_tp[i], without[i], atol=1e-4)


def test_hooks_are_removed_after_the_forward(tiny_engine, tiny_backbone: Backbone) -> None:  # type: ignore[no-untyped-def]
    items = prepared(tiny_engine)
    before = embed_batch(tiny_backbone, items, ForwardSpec())
    embed_batch(tiny_backbone, items, spec_for(0, 3, output_layer=2))
    for layer in tiny_backbone.layers:
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    torch.testing.assert_close(embed_batch(tiny_backbone, items, ForwardSpec()), before, atol=0, rtol=0)


@pytest.mark.parametrize("output_layer", [0, 2])
def test_output_layer_captures_that_layer(tiny_engine, tiny_backbone: Backbone, output_layer: int) -> None:  # type: ignore[no-untyped-def]
    items = prepared(tiny_engine)
    spec = spec_for(1, 2, output_layer)
    with record_layers(tiny_backbone) as (_, out):
        hidden, lengths = hidden_states(tiny_backbone, items, spec)
    torch.testing.assert_close(hidden, out[output_layer], atol=0, rtol=0)
    pooled = embed_batch(tiny_backbone, items, spec)  # (B, H)
    for i in range(len(items)):
        torch.testing.assert_close(pooled[i], out[output_layer][i, int(lengths[i]) - 1], atol=1e-6, rtol=1e-5)
    final = embed_batch(tiny_backbone, items, spec_for(1, 2))
    assert not torch.allclose(pooled, final, atol=1e-4)


def test_engine_passes_the_request_layers(tiny_engine, tiny_backbone: Backbone) -> None:  # type: ignore[no-untyped-def]
    opts = EmbedOptions(mode="token_prepend", start_layer=0, end_layer=1, output_layer=2, normalize=False)
    p = tiny_engine.prepare(TEXTS, opts)
    assert p.spec == spec_for(0, 1, 2)
    got = tiny_engine.embed(TEXTS, opts).vectors
    expected = embed_batch(tiny_backbone, p.items, p.spec).numpy()
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=1e-5, rtol=1e-4)
