"""The decoder: speculative greedy output is token-identical to plain greedy (tiny and real model,
with datastore and passages), streaming, stop strings, EOS, max_new_tokens, cancellation and limits."""

from __future__ import annotations

import threading

import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.errors import InvalidInput
from lodestar.generate.datastore import Datastore
from lodestar.generate.decoder import DecoderConfig, SpeculativeDecoder
from lodestar.generate.types import GenerationParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PLAIN = GenerationParams(max_new_tokens=40, speculative=False)
SPEC = GenerationParams(max_new_tokens=40)
TINY_PROMPTS = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
    "one two three four one two three four one two",
    "The quick brown fox",
]
CORPUS = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps again.",
]


@pytest.fixture(scope="module")
def tiny_decoder(tiny_backbone: Backbone) -> SpeculativeDecoder:
    return SpeculativeDecoder(tiny_backbone, Datastore.from_texts(CORPUS, tiny_backbone.tokenizer))


def hf_greedy(bb: Backbone, prompt: str, n: int) -> list[int]:
    ids = bb.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = bb.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=bb.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_tiny_speculative_greedy_is_identical(tiny_decoder: SpeculativeDecoder, tiny_backbone: Backbone) -> None:
    drafted = 0
    for prompt in TINY_PROMPTS:
        plain = tiny_decoder.generate(prompt, PLAIN)
        spec = tiny_decoder.generate(prompt, SPEC, passages=CORPUS[:1])
        assert spec.token_ids == plain.token_ids and spec.text == plain.text
        assert plain.token_ids == hf_greedy(tiny_backbone, prompt, 40)[: len(plain.token_ids)]
        assert plain.stats.steps == len(plain.token_ids) - 1 and plain.stats.mean_accepted_tokens == 1.0
        drafted += spec.stats.accepted_draft_tokens
        assert sum(spec.stats.tokens_per_step) == len(spec.token_ids) - 1  # the prefill made the first
    assert drafted > 0


def test_real_model_speculative_greedy_is_identical(backbone: Backbone) -> None:
    corpus = ["Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday."]
    dec = SpeculativeDecoder(backbone, Datastore.from_texts(corpus, backbone.tokenizer))
    # Prompts whose greedy continuation repeats the passage or the prompt in float32 and in bfloat16
    # alike (auto picks either, by CPU): "The days of the week are" continues with a number in float32.
    prompts = [
        ("Count from 1 to 10: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Again: 1, 2, 3,", None),
        ("The seven days of the week, in order: Monday, Tuesday,", corpus),
        ("def fib(n):\n    if n < 2:\n        return n\n", None),
    ]
    accepted = 0
    for prompt, passages in prompts:
        plain = dec.generate(prompt, GenerationParams(max_new_tokens=24, speculative=False))
        spec = dec.generate(prompt, GenerationParams(max_new_tokens=24), passages=passages)
        assert spec.token_ids == plain.token_ids, prompt
        accepted += spec.stats.accepted_draft_tokens
    assert accepted >= 10


def test_chat_prompt_identical_on_real_model(backbone: Backbone) -> None:
    passage = "The Amazon River is about 6,400 km long and flows through Brazil, Peru and Colombia."
    dec = SpeculativeDecoder(backbone)
    q = f"Passage: {passage}\n\nQuestion: How long is the Amazon River? Answer with a sentence from the passage."
    plain = dec.generate(q, GenerationParams(max_new_tokens=20, speculative=False, chat=True))
    spec = dec.generate(q, GenerationParams(max_new_tokens=20, chat=True), passages=[passage])
    assert spec.token_ids == plain.token_ids and spec.finish_reason == plain.finish_reason


def test_stream_chunks_add_up_and_end_with_stats(tiny_decoder: SpeculativeDecoder) -> None:
    chunks = list(tiny_decoder.stream(TINY_PROMPTS[1], SPEC))
    whole = tiny_decoder.generate(TINY_PROMPTS[1], SPEC)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason == "length" and last.stats is not None and last.stats.generated_tokens == 40
    assert sum((c.token_ids for c in chunks), []) == whole.token_ids
    assert "".join(c.text for c in chunks) == whole.text
    assert len(chunks) < 40  # several tokens per step
    assert last.stats.as_dict()["mean_accepted_tokens"] > 1.0


@pytest.mark.parametrize("n", [1, 2, 7, 33])
def test_max_new_tokens_is_exact(tiny_decoder: SpeculativeDecoder, n: int) -> None:
    spec = tiny_decoder.generate(TINY_PROMPTS[1], GenerationParams(max_new_tokens=n))
    plain = tiny_decoder.generate(TINY_PROMPTS[1], GenerationParams(max_new_tokens=n, speculative=False))
    assert spec.token_ids == plain.token_ids and len(spec.token_ids) == n and spec.finish_reason == "length"


def test_stop_strings_cut_text_and_are_never_streamed(tiny_decoder: SpeculativeDecoder) -> None:
    full = tiny_decoder.generate(TINY_PROMPTS[0], PLAIN).text
    stop = full[12:16]
    assert stop and stop in full
    expected = full[: full.index(stop)]
    for speculative in (False, True):
        params = GenerationParams(max_new_tokens=40, stop=(stop, "never-there"), speculative=speculative)
        chunks = list(tiny_decoder.stream(TINY_PROMPTS[0], params))
        text = "".join(c.text for c in chunks)
        assert text == expected and chunks[-1].finish_reason == "stop"
        assert all(stop not in c.text for c in chunks)


def test_eos_ends_generation(tiny_backbone: Backbone) -> None:
    dec = SpeculativeDecoder(tiny_backbone)
    ref = dec.generate(TINY_PROMPTS[2], PLAIN).token_ids
    dec.eos_ids = {ref[5]}
    cut = ref.index(ref[5])
    for params in (PLAIN, SPEC):
        res = dec.generate(TINY_PROMPTS[2], params)
        assert res.finish_reason == "eos" and res.token_ids == ref[:cut]


def test_cancellation_by_event_and_callable(tiny_decoder: SpeculativeDecoder) -> None:
    event = threading.Event()
    chunks = []
    for chunk in tiny_decoder.stream(TINY_PROMPTS[2], GenerationParams(max_new_tokens=200), cancel=event):
        chunks.append(chunk)
        event.set()
    assert chunks[-1].finish_reason == "cancelled" and len(chunks) == 2
    assert chunks[-1].stats is not None and chunks[-1].stats.generated_tokens == 1
    calls = iter(range(100))
    res = tiny_decoder.generate(TINY_PROMPTS[2], GenerationParams(max_new_tokens=200), cancel=lambda: next(calls) >= 3)
    assert res.finish_reason == "cancelled" and 1 <= len(res.token_ids) < 200


def test_validation_names_the_limits(tiny_decoder: SpeculativeDecoder, tiny_backbone: Backbone) -> None:
    cases = [
        (GenerationParams(max_new_tokens=0), "max_new_tokens must be in 1..2048"),
        (GenerationParams(temperature=-1), "temperature must be in"),
        (GenerationParams(top_p=0.0), "top_p must be in"),
        (GenerationParams(stop=("",)), "stop strings must have"),
        (GenerationParams(stop=tuple(str(i) for i in range(20))), "at most 16 stop strings"),
    ]
    for params, msg in cases:
        with pytest.raises(InvalidInput, match=msg):
            tiny_decoder.stream("hello", params)
    with pytest.raises(InvalidInput, match="empty"):
        tiny_decoder.generate([], SPEC)
    with pytest.raises(InvalidInput, match="token ids must be in"):
        tiny_decoder.generate([10**9], SPEC)
    with pytest.raises(InvalidInput, match="exceeds the model's context of 512"):
        tiny_decoder.generate([5] * 500, GenerationParams(max_new_tokens=20))
    small = SpeculativeDecoder(tiny_backbone, config=DecoderConfig(max_passages=1))
    with pytest.raises(InvalidInput, match="at most 1 passages"):
        small.generate("hi", SPEC, passages=["a", "b"])


def _tiny_windowed(tokenizer, kind: str, window: int) -> Backbone:  # type: ignore[no-untyped-def]
    """A tiny random model with sliding-window attention: every layer (Mistral) or alternate ones (Qwen2
    with `layer_types`), so that prompts longer than the window exercise it."""
    from tinymodel import CACHE_DIR
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from lodestar.backbone import BackboneConfig
    from lodestar.bench.tinymodel import tiny_shape

    torch.manual_seed(0)
    common = tiny_shape(tokenizer)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=window, **common))
    else:
        layer_types = ["sliding_attention", "full_attention"] * 2
        model = Qwen2ForCausalLM(
            Qwen2Config(use_sliding_window=True, sliding_window=window, layer_types=layer_types, **common)
        )
    return Backbone.from_model(
        model.float().eval(), tokenizer, f"tiny-{kind}", BackboneConfig(model="tiny", cache_dir=CACHE_DIR)
    )


@pytest.mark.parametrize("kind", ["mistral", "qwen2-mixed"])
def test_speculative_greedy_is_identical_past_a_sliding_window(tiny_backbone: Backbone, kind: str) -> None:
    """With a window shorter than the prompt, tree verification must hide what the window hides and the
    cache rollback must keep positions straight: speculative greedy still equals plain greedy and HF's."""
    bb = _tiny_windowed(tiny_backbone.tokenizer, kind, window=12)
    decoder = SpeculativeDecoder(bb, Datastore.from_texts(CORPUS, bb.tokenizer))
    drafted = 0
    for prompt in TINY_PROMPTS[:2]:
        plain = decoder.generate(prompt, PLAIN)
        spec = decoder.generate(prompt, SPEC, passages=CORPUS[:1])
        assert plain.token_ids == hf_greedy(bb, prompt, 40)[: len(plain.token_ids)]
        assert spec.token_ids == plain.token_ids
        drafted += spec.stats.accepted_draft_tokens
    assert drafted > 0
