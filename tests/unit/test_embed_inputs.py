"""Input building and request validation: templates, instructions, truncation, and every bad input
failing with InvalidInput whose message names the limit or the valid values (tiny model, fast)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from lodestar.backbone import Backbone
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.embed.forward import hidden_states
from lodestar.embed.modes import ECHO, MODES, PROMPTEOL, ForwardSpec, InputBuilder, fast_backend, get_mode
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput

LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " * 3


def ids(tokenizer, s: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(tokenizer(s, add_special_tokens=False)["input_ids"])


@pytest.fixture
def small_engine(tiny_backbone: Backbone) -> Iterator[EmbeddingEngine]:
    eng = EmbeddingEngine(tiny_backbone, EngineConfig(max_texts_per_request=3, max_tokens=64))
    yield eng
    eng.close()


# --- templates and instructions --------------------------------------------------------------


def test_a_request_tokenised_in_one_batch_equals_text_by_text(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A fast tokenizer's backend tokenises a request's texts in one call (without the GIL); every
    item equals what the tokenizer gives text by text, whatever the template or the text."""
    builder = InputBuilder(tokenizer)
    assert builder._backend is not None  # the bundled tokenizer takes the batched path
    texts = ["", " ", "a red apple", "  Two  spaces\tand\nlines", "naïve café — 東京 😀", "Don't", LONG]
    for name, template in (("mean", "{text}"), ("prompteol", PROMPTEOL), ("echo", ECHO), ("mean", "query: {text}")):
        mode = get_mode(name)
        batched = builder.build_many(mode, texts, template, "", 64, True)
        assert batched == [builder.build(mode, t, template, "", 64, True) for t in texts]
    for text, item in zip(texts, builder.build_many(get_mode("mean"), texts, "{text}", "", 512, True), strict=True):
        assert item.ids == ids(tokenizer, text)


def test_a_backend_that_tokenises_differently_is_not_used(tokenizer) -> None:  # type: ignore[no-untyped-def]
    class Lowering:  # a fast tokenizer with preprocessing of its own that its backend does not know about
        is_fast = True
        backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, s: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return tokenizer(s.lower(), add_special_tokens=add_special_tokens)

    assert fast_backend(tokenizer) is not None
    assert fast_backend(Lowering()) is None  # falls back to calling the tokenizer text by text
    assert fast_backend(object()) is None  # not a fast tokenizer


def test_prompt_template_wraps_the_text(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    p = tiny_engine.prepare(["a red apple"], EmbedOptions(mode="mean", prompt="query: {text}"))
    (e,) = p.items
    # The text tokenises as it would mid-sentence: same ids as the whole string.
    assert e.ids == ids(tokenizer, "query: a red apple")
    assert (e.pool_start, e.pool_end) == (0, len(e.ids))  # mean pools the template too, not an instruction


def test_prompteol_default_template_and_last_token(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    (e,) = tiny_engine.prepare(["a red apple"], EmbedOptions(mode="prompteol")).items
    assert e.ids == ids(tokenizer, PROMPTEOL.format(text="a red apple"))
    assert (e.pool_start, e.pool_end) == (len(e.ids) - 1, len(e.ids))


def test_instruction_is_excluded_from_mean_pooling(tiny_engine, tiny_backbone, tokenizer) -> None:  # type: ignore[no-untyped-def]
    instruction = "Represent this sentence for retrieval: "
    opts = EmbedOptions(mode="mean", instruction=instruction, normalize=False)
    (e,) = tiny_engine.prepare(["a red apple"], opts).items
    # The instruction's trailing space goes to the text (" a" as mid-sentence), like a template's.
    n_instr = len(ids(tokenizer, instruction.rstrip(" ")))
    assert e.ids[:n_instr] == ids(tokenizer, instruction.rstrip(" "))
    assert e.ids[n_instr:] == ids(tokenizer, " a red apple")
    assert e.pool_start == n_instr and e.pool_end == len(e.ids)
    # Behaviour: the vector is the mean over the text tokens only (the instruction is context).
    hidden, _ = hidden_states(tiny_backbone, [e], ForwardSpec())  # (1, T, H)
    got = tiny_engine.embed(["a red apple"], opts).vectors[0]
    np.testing.assert_allclose(got, hidden[0, n_instr:].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(got, hidden[0].mean(0).numpy(), atol=1e-3)
    # The instruction still conditions the text's states.
    plain = tiny_engine.embed(["a red apple"], EmbedOptions(mode="mean", normalize=False)).vectors[0]
    assert not np.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "echo"])
def test_prompt_without_text_slot_is_rejected(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=r"must contain '\{text\}'"):
        tiny_engine.prepare(["x"], EmbedOptions(mode=mode, prompt="no slot here"))


def test_echo_needs_two_text_slots(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=r"'\{text\}' at least 2 time") as err:
        tiny_engine.prepare(["x"], EmbedOptions(mode="echo", prompt="once: {text}"))
    assert ECHO in str(err.value)  # and shows a valid example
    tiny_engine.prepare(["x"], EmbedOptions(mode="echo", prompt="A {text} B {text}"))


# --- truncation --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "prompteol", "token_prepend"])
def test_truncate_cuts_to_exactly_the_limit(tiny_engine, mode: str) -> None:  # type: ignore[no-untyped-def]
    res = tiny_engine.embed([LONG, "short"], EmbedOptions(mode=mode, max_tokens=24))
    assert res.truncated == [True, False]
    assert res.token_counts[0] == 24
    assert res.token_counts[1] < 24
    assert res.vectors.shape == (2, 64)


def test_truncated_echo_keeps_both_copies_equal(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    (e,) = tiny_engine.prepare([LONG], EmbedOptions(mode="echo", max_tokens=30)).items
    assert e.truncated and len(e.ids) <= 30
    second = e.ids[e.pool_start : e.pool_end]
    assert len(second) >= 1
    first_at = next(i for i in range(e.pool_start) if e.ids[i : i + len(second)] == second)
    assert first_at + len(second) <= e.pool_start  # the first copy is cut the same way


def test_truncate_off_rejects_naming_the_limit(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=r"text 1 .*max_tokens=24"):
        tiny_engine.prepare(["fine", LONG], EmbedOptions(max_tokens=24, truncate=False))
    ok = tiny_engine.prepare(["fine"], EmbedOptions(max_tokens=24, truncate=False))
    assert ok.items[0].truncated is False


def test_template_longer_than_max_tokens_is_rejected(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=r"max_tokens is 5"):
        tiny_engine.prepare(["x"], EmbedOptions(mode="prompteol", max_tokens=5))
    with pytest.raises(InvalidInput, match=r"max_tokens is 4"):
        tiny_engine.prepare(["x"], EmbedOptions(instruction="a long instruction of several words", max_tokens=4))


# --- bad inputs ---------------------------------------------------------------------------------


def test_empty_list(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match="send 1 to 3 texts"):
        small_engine.embed([])


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text(small_engine: EmbeddingEngine, bad: str) -> None:
    with pytest.raises(InvalidInput, match="text 1 is empty"):
        small_engine.embed(["ok", bad])


def test_too_many_texts(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match="max_texts_per_request=3"):
        small_engine.embed(["a", "b", "c", "d"])
    assert small_engine.embed(["a", "b", "c"]).vectors.shape == (3, 64)


def test_unknown_mode_lists_valid_modes(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput) as err:
        small_engine.embed(["a"], EmbedOptions(mode="cls"))
    msg = str(err.value)
    assert "'cls'" in msg
    for name in ("mean", "last", "prompteol", "echo", "token_prepend", "bidirectional"):
        assert name in msg
    with pytest.raises(InvalidInput, match="valid modes"):
        get_mode("MEAN")


def test_unknown_default_mode_fails_at_start(tiny_backbone: Backbone) -> None:
    with pytest.raises(InvalidInput, match="valid modes are"):
        EmbeddingEngine(tiny_backbone, EngineConfig(default_mode="nope"))


@pytest.mark.parametrize("dims", [65, 1000, -1])
def test_dimensions_out_of_range(small_engine: EmbeddingEngine, dims: int) -> None:
    with pytest.raises(InvalidInput, match=r"use 1\.\.64 \(or 0 for all\)"):
        small_engine.embed(["a"], EmbedOptions(dimensions=dims))


def test_dimensions_edges_are_valid(small_engine: EmbeddingEngine) -> None:
    assert small_engine.embed(["a"], EmbedOptions(dimensions=1)).vectors.shape == (1, 1)
    assert small_engine.embed(["a"], EmbedOptions(dimensions=64)).vectors.shape == (1, 64)
    assert small_engine.embed(["a"], EmbedOptions(dimensions=0)).vectors.shape == (1, 64)


def test_unknown_output_dtype(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match="valid are float32, float16, int8, binary"):
        small_engine.embed(["a"], EmbedOptions(dtype="bf16"))


def test_unknown_adapter(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match=r"unknown adapter 'nope': valid names are \[none installed\]"):
        small_engine.embed(["a"], EmbedOptions(adapter="nope"))


def test_max_tokens_above_server_limit(small_engine: EmbeddingEngine) -> None:
    assert small_engine.max_tokens == 64
    with pytest.raises(InvalidInput, match="max_tokens=65 is above the server's limit of 64"):
        small_engine.embed(["a"], EmbedOptions(max_tokens=65))
    assert small_engine.embed(["a"], EmbedOptions(max_tokens=64)).vectors.shape == (1, 64)


def test_negative_max_tokens(small_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match="max_tokens is -3"):
        small_engine.embed(["a"], EmbedOptions(max_tokens=-3))


def test_server_max_tokens_is_capped_by_the_model(tiny_backbone: Backbone) -> None:
    eng = EmbeddingEngine(tiny_backbone, EngineConfig(max_tokens=100_000))
    try:
        assert eng.max_tokens == tiny_backbone.max_tokens == 512
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("start", "end", "out", "needle"),
    [
        (3, 1, None, "0 <= start_layer <= end_layer < 4; got 3..1"),
        (0, 4, None, "0 <= start_layer <= end_layer < 4; got 0..4"),
        (-1, 2, None, "0 <= start_layer <= end_layer < 4; got -1..2"),
        (1, 2, 4, "output_layer must be -1 (final) or in 0..3; got 4"),
        (1, 2, -2, "output_layer must be -1 (final) or in 0..3; got -2"),
    ],
)
def test_token_prepend_layer_range_invalid(
    small_engine: EmbeddingEngine, start: int, end: int, out: int | None, needle: str
) -> None:
    opts = EmbedOptions(mode="token_prepend", start_layer=start, end_layer=end, output_layer=out)
    with pytest.raises(InvalidInput) as err:
        small_engine.embed(["a"], opts)
    assert needle in str(err.value)


def test_token_prepend_default_range_fits_a_shallow_model(small_engine: EmbeddingEngine) -> None:
    """The server default (2..7) is for deep models; on a 4-layer model it is clamped, not refused."""
    p = small_engine.prepare(["a"], EmbedOptions(mode="token_prepend"))
    assert p.spec.prepend is not None
    assert (p.spec.prepend.start, p.spec.prepend.end) == (2, 3)
    explicit = small_engine.prepare(
        ["a"], EmbedOptions(mode="token_prepend", start_layer=0, end_layer=2, output_layer=1)
    )
    assert explicit.spec.prepend is not None
    assert (explicit.spec.prepend.start, explicit.spec.prepend.end, explicit.spec.output_layer) == (0, 2, 1)


def test_validation_happens_before_any_work(small_engine: EmbeddingEngine) -> None:
    """A bad text anywhere in the request fails it before anything is queued."""
    before = small_engine.batcher.stats.batches
    with pytest.raises(InvalidInput):
        small_engine.embed(["fine", ""])
    assert small_engine.batcher.stats.batches == before
    assert small_engine.batcher.queued == 0


def test_embed_result_metadata(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    res = tiny_engine.embed(["hello world"], EmbedOptions(mode="last"))
    assert res.model == "tiny-llama" and res.mode == "last"
    assert res.token_counts == [len(tiny_engine.prepare(["hello world"], EmbedOptions()).items[0])]
    assert tiny_engine.embed(["hello world"]).mode == "mean"


class _ClearedByAnotherThread(dict):  # type: ignore[type-arg]
    """A cache that another request thread empties right after each insert (the worst interleaving)."""

    def __setitem__(self, key: str, value: list[int]) -> None:
        super().__setitem__(key, value)
        self.clear()


def test_template_cache_survives_concurrent_clearing(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    builder = tiny_engine.inputs
    builder._cache = _ClearedByAnotherThread()
    e = builder.build(get_mode("prompteol"), "red apple", PROMPTEOL, "Be brief.", 64, True)
    assert e.ids == ids(tokenizer, "Be brief.") + ids(tokenizer, PROMPTEOL.format(text="red apple"))
