"""Embedding modes: shapes, normalisation and batch invariance for every mode (tiny model), the
mode-specific behaviour (echo's pooled span, bidirectional attention), and the same guarantees on
the real bundled model for the main modes (marked slow)."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.embed.forward import (
    PACK_MAX_TOKENS,
    PACK_ROW_TOKENS,
    attention_mask,
    embed_batch,
    hidden_states,
    packable,
    packed_layout,
)
from lodestar.embed.modes import MODES, Encoded, ForwardSpec, TokenPrepend, get_mode
from lodestar.embed.types import EmbedOptions

ALL_MODES = list(MODES)
# Different lengths on purpose: each text is padded differently in the mixed batch.
TEXTS = [
    "Cats sleep.",
    "The committee postponed the vote on the new harbour bridge until next spring.",
    "A short poem about rain",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def invariance_floor(engine) -> float:  # type: ignore[no-untyped-def]
    """Cosine a text's vector keeps across batches: 0.999 in fp32; bf16 (auto on CPUs with
    AVX512-BF16) rounds padded and unpadded forwards differently at its ~3 significant digits."""
    return 0.999 if engine.backbone.dtype == torch.float32 else 0.995


def check_batch_invariance(engine, mode: str, texts: list[str], alone_idx: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Embed `texts` as one padded batch and some of them alone; cosine must be >= the floor."""
    opts = EmbedOptions(mode=mode)
    mixed = engine.embed_direct(texts, opts, batch_size=len(texts)).vectors  # one forward, padded
    alone = np.stack([engine.embed_direct([texts[i]], opts).vectors[0] for i in alone_idx])
    cos = cosines(mixed[alone_idx], alone)
    assert (cos >= invariance_floor(engine)).all(), f"{mode}: vector depends on its batch (cosines {cos})"
    return mixed


# --- every mode on the tiny model --------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_shape_and_unit_norm(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    res = tiny_engine.embed(TEXTS, EmbedOptions(mode=mode))
    assert res.vectors.shape == (3, 64) and res.vectors.dtype == np.float32
    assert np.isfinite(res.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, rtol=1e-5)
    assert res.mode == mode and len(res.token_counts) == 3 and res.truncated == [False] * 3


@pytest.mark.parametrize("mode", ALL_MODES)
def test_normalize_false_returns_raw_pooled_vectors(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    raw = tiny_engine.embed(TEXTS, EmbedOptions(mode=mode, normalize=False)).vectors
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    unit = tiny_engine.embed(TEXTS, EmbedOptions(mode=mode)).vectors
    np.testing.assert_allclose(raw / norms[:, None], unit, atol=1e-5)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_batch_invariance_tiny(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    mixed = check_batch_invariance(tiny_engine, mode, TEXTS, [0, 1, 2])
    # Through the dynamic batcher (length-sorted, merged) the rows come back in request order.
    batched = tiny_engine.embed(TEXTS, EmbedOptions(mode=mode)).vectors
    assert (cosines(batched, mixed) >= 0.999).all()


@pytest.mark.parametrize("mode", ALL_MODES)
def test_different_texts_give_different_vectors(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    v = tiny_engine.embed(["the cat sat on the mat", "the cat sat on the rug"], EmbedOptions(mode=mode)).vectors
    assert cosines(v[:1], v[1:])[0] < 0.9999


def test_modes_differ_from_each_other(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    vecs = {m: tiny_engine.embed(TEXTS[:1], EmbedOptions(mode=m)).vectors[0] for m in ALL_MODES}
    for i, a in enumerate(ALL_MODES):
        for b in ALL_MODES[i + 1 :]:
            assert not np.allclose(vecs[a], vecs[b], atol=1e-4), f"{a} and {b} gave the same vector"


# --- echo ---------------------------------------------------------------------------------------


def test_echo_pools_exactly_the_second_copy(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "a quick brown fox"
    (e,) = tiny_engine.prepare([text], EmbedOptions(mode="echo")).items
    copy = list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
    head = list(tokenizer("Rewrite the sentence:", add_special_tokens=False)["input_ids"])
    middle = list(tokenizer(", rewritten sentence:", add_special_tokens=False)["input_ids"])
    assert e.ids == head + copy + middle + copy
    assert (e.pool_start, e.pool_end) == (len(head) + len(copy) + len(middle), len(e.ids))
    assert e.ids[e.pool_start : e.pool_end] == copy


def test_echo_vector_is_the_mean_over_the_second_copy_only(tiny_engine, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    text = "a quick brown fox"
    opts = EmbedOptions(mode="echo", normalize=False)
    (e,) = tiny_engine.prepare([text], opts).items
    n = e.pool_end - e.pool_start
    first = next(i for i in range(e.pool_start) if e.ids[i : i + n] == e.ids[e.pool_start : e.pool_end])
    hidden, _ = hidden_states(tiny_backbone, [e], ForwardSpec())  # (1, T, H)
    h = hidden[0].numpy()
    got = tiny_engine.embed([text], opts).vectors[0]
    np.testing.assert_allclose(got, h[e.pool_start : e.pool_end].mean(0), atol=1e-5)
    # Pooling the first copy, or both copies, gives something else: the first copy is not pooled.
    assert not np.allclose(got, h[first : first + n].mean(0), atol=1e-3)
    both = np.concatenate([h[first : first + n], h[e.pool_start : e.pool_end]]).mean(0)
    assert not np.allclose(got, both, atol=1e-3)


def test_echo_vector_follows_the_text(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    v = tiny_engine.embed(["a quick brown fox", "a quick brown cat"], EmbedOptions(mode="echo")).vectors
    assert cosines(v[:1], v[1:])[0] < 0.9999


def test_echo_custom_template_pools_the_last_copy(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    (e,) = tiny_engine.prepare(["dog"], EmbedOptions(mode="echo", prompt="{text} again {text} end")).items
    dog = list(tokenizer(" dog", add_special_tokens=False)["input_ids"])
    end = list(tokenizer(" end", add_special_tokens=False)["input_ids"])
    assert e.ids[e.pool_start : e.pool_end] == dog
    assert e.ids[e.pool_end :] == end  # the trailing template piece is not pooled


# --- bidirectional ------------------------------------------------------------------------------


def test_attention_mask_shapes() -> None:
    lengths = torch.tensor([3, 1])
    causal = attention_mask(lengths, 3, bidirectional=False)  # (B, 1, T, T)
    bidir = attention_mask(lengths, 3, bidirectional=True)
    assert causal.shape == bidir.shape == (2, 1, 3, 3)
    assert causal[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert bidir[0, 0].all()
    assert bidir[1, 0].tolist() == [[True, False, False]] * 3  # padding keys are never attended


def test_bidirectional_first_token_sees_the_last_word(tiny_engine, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    a, b = "the cat sat on the mat", "the cat sat on the rug"
    for mode, expect_change in (("mean", False), ("bidirectional", True)):
        p = tiny_engine.prepare([a, b], EmbedOptions(mode=mode))
        assert p.items[0].ids[0] == p.items[1].ids[0] and p.items[0].ids[-1] != p.items[1].ids[-1]
        ha, _ = hidden_states(tiny_backbone, p.items[:1], p.spec)  # (1, T, H)
        hb, _ = hidden_states(tiny_backbone, p.items[1:], p.spec)
        changed = not torch.allclose(ha[0, 0], hb[0, 0], atol=1e-5)
        assert changed == expect_change, mode


def test_bidirectional_padding_never_affects_results(tiny_engine, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    p = tiny_engine.prepare(TEXTS, EmbedOptions(mode="bidirectional"))
    assert p.spec.bidirectional
    batched, lengths = hidden_states(tiny_backbone, p.items, p.spec)  # (3, T, H), right-padded
    for i, e in enumerate(p.items):
        alone, _ = hidden_states(tiny_backbone, [e], p.spec)  # (1, len, H), no padding
        n = int(lengths[i])
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-4)


def test_bidirectional_ignores_what_is_in_the_padding(tiny_engine, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    """Different pad ids (other garbage in the padded slots) must give the same vectors."""
    p = tiny_engine.prepare(TEXTS, EmbedOptions(mode="bidirectional"))
    first = embed_batch(tiny_backbone, p.items, p.spec)
    other_pad = dataclasses.replace(tiny_backbone, tokenizer=SimpleNamespace(pad_token_id=123))
    second = embed_batch(other_pad, p.items, p.spec)
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-4)


def test_hooks_never_touch_another_callers_forward(tiny_engine, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    """Generation and compression run forwards on the same model under backbone.lock; a
    token_prepend batch waiting for the lock must not have hooked the layers already (its prepend
    hook ran on the other forward's rows: a wrong result, or an IndexError on a shorter input)."""
    items = tiny_engine.prepare(TEXTS, EmbedOptions(mode="token_prepend")).items
    spec = ForwardSpec(prepend=TokenPrepend(0, tiny_backbone.num_layers - 1, 1), output_layer=1)
    ids = torch.arange(1, 9)[None, :]  # (1, 8): shorter than the waiting batch's rows
    with torch.inference_mode():
        expected = tiny_backbone.decoder(input_ids=ids).last_hidden_state
    waiting = threading.Thread(target=embed_batch, args=(tiny_backbone, items, spec))
    with tiny_backbone.lock:  # another caller's forward holds the model
        waiting.start()
        time.sleep(0.3)  # the embed batch is now waiting for the lock
        hooked = [len(layer._forward_pre_hooks) + len(layer._forward_hooks) for layer in tiny_backbone.layers]
        with torch.inference_mode():
            got = tiny_backbone.decoder(input_ids=ids).last_hidden_state
    waiting.join(timeout=30)
    assert hooked == [0] * tiny_backbone.num_layers
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_mode_forward_specs() -> None:
    assert get_mode("bidirectional").forward_spec(None, None) == ForwardSpec(bidirectional=True)
    assert get_mode("mean").forward_spec("", None) == ForwardSpec()
    tp = get_mode("token_prepend").forward_spec("ad", None)
    assert tp.prepend is not None and tp.adapter == "ad" and tp.output_layer == tp.prepend.output_layer
    # Modes that share a forward can share a batch; others cannot.
    assert get_mode("mean").forward_spec(None, None) == get_mode("prompteol").forward_spec(None, None)
    assert get_mode("mean").forward_spec(None, None) != get_mode("bidirectional").forward_spec(None, None)


PACK_TEXTS = [*TEXTS, "one", "Two words", "The harbour bridge vote again, with a longer tail of words this time."]
PACK_OPTIONS = [EmbedOptions(mode=m) for m in ALL_MODES] + [
    EmbedOptions(mode="mean", sparse=True),  # the sparse head reads the unpacked rows' pooled spans
    EmbedOptions(mode="token_prepend", output_layer=2),  # an intermediate layer, captured by a hook
]


@pytest.mark.parametrize(
    "options",
    PACK_OPTIONS,
    ids=lambda o: f"{o.mode}{'-sparse' if o.sparse else ''}{'-layer' if o.output_layer else ''}",
)
def test_packed_rows_give_the_vectors_of_one_text_a_row(tiny_engine, options: EmbedOptions) -> None:  # type: ignore[no-untyped-def]
    """Texts packed into shared rows, each masked to its own tokens with its own positions, give
    what one text a row gives (fp32), for every mode: token prepending's placeholders, echo's second
    copy and the bidirectional mask included."""
    p = tiny_engine.prepare(PACK_TEXTS, options)
    one_a_row = embed_batch(tiny_engine.backbone, p.items, p.spec, pack=False)
    packed = embed_batch(tiny_engine.backbone, p.items, p.spec, pack=True)
    for a, b in zip(
        one_a_row if isinstance(one_a_row, tuple) else (one_a_row,), packed if isinstance(packed, tuple) else (packed,)
    ):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
        else:
            assert torch.equal(a, b)


def test_packed_layout_fills_rows_and_masks_each_text_to_itself() -> None:
    """First-fit decreasing into rows of PACK_ROW_TOKENS: 5 texts of 28-100 tokens take 3 rows; no
    token sees another text's, positions restart at each text, padding columns see only themselves."""
    lens = [100, 60, 50, 28, 70]  # rows: 100+28 (full), 70+50, 60
    batch = [
        Encoded(ids=list(range(1, n + 1)), pool_start=0, pool_end=n, placeholder=None, truncated=False) for n in lens
    ]
    lay = packed_layout(batch, pad=0, bidirectional=False)
    assert lay.ids.shape[0] == 3 and lay.ids.shape[1] <= PACK_ROW_TOKENS
    for i, n in enumerate(lens):
        r, o = int(lay.row[i]), int(lay.offset[i])
        assert lay.ids[r, o : o + n].tolist() == batch[i].ids
        assert lay.positions[r, o : o + n].tolist() == list(range(n))
        sees = lay.mask[r, 0, o : o + n]  # (n, T): this text's queries
        assert sees[:, o : o + n].equal(torch.ones(n, n, dtype=torch.bool).tril())  # causal within the text
        assert not sees[:, :o].any() and not sees[:, o + n :].any()  # nothing outside it
    assert lay.mask.sum(-1).min() >= 1  # every query (padding included) sees something


def test_a_batch_is_packed_only_when_short_and_packing_saves_padding() -> None:
    assert packable([5, 40, 8, 12, 30, 9, 7, 22])  # mixed lengths, arrival order: 8 x 40 = 320 against 2 rows of 128
    assert not packable([20, 21, 22, 22])  # like lengths: little padding to save, longer attention rows
    assert not packable([5, 10, PACK_MAX_TOKENS + 1])  # a long text: one text a row


# --- the real bundled model (slow) --------------------------------------------------------------

REAL_TEXTS = ["A cat sat.", "The old lighthouse keeper watched the storm roll in from the sea.", "Fresh bread"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mean", "prompteol", "token_prepend", "bidirectional"])
def test_real_model_shapes_norm_and_batch_invariance(engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    mixed = check_batch_invariance(engine, mode, REAL_TEXTS, [0, 2])
    assert mixed.shape == (3, engine.backbone.hidden_size) == (3, 576)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_real_model_normalize_false(engine) -> None:  # type: ignore[no-untyped-def]
    raw = engine.embed(REAL_TEXTS[:2], EmbedOptions(mode="mean", normalize=False)).vectors
    assert raw.shape == (2, 576)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)


@pytest.mark.slow
def test_real_model_similarity_is_sensible(engine) -> None:  # type: ignore[no-untyped-def]
    """PromptEOL on the real model ranks a paraphrase above an unrelated sentence."""
    v = engine.embed(
        ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."],
        EmbedOptions(mode="prompteol"),
    ).vectors
    assert v[0] @ v[1] > v[0] @ v[2]


@pytest.mark.slow
def test_real_model_echo_and_last(engine) -> None:  # type: ignore[no-untyped-def]
    for mode in ("echo", "last"):
        res = engine.embed(REAL_TEXTS[:2], EmbedOptions(mode=mode, dimensions=64))
        assert res.vectors.shape == (2, 64)
        np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, rtol=1e-5)


def test_backbone_fixture_types(tiny_backbone: Backbone) -> None:
    assert tiny_backbone.hidden_size == 64 and tiny_backbone.num_layers == 4
