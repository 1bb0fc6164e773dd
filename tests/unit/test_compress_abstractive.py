"""Abstractive compression: bounded greedy summaries with a faithfulness report (real model), the
"nothing relevant" path, and the batched generation loop (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.backbone.chat import chat_ids, generate
from lodestar.compress_ctx.abstractive import AbstractiveCompressor, is_nothing, tidy
from lodestar.compress_ctx.types import AUGMENT, SKIP
from lodestar.errors import InvalidInput

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compress"


@pytest.fixture(scope="module")
def passages() -> list[str]:
    with open(FIXTURES / "beir" / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_summary_is_bounded_and_reports_faithfulness(backbone, passages: list[str]) -> None:  # type: ignore[no-untyped-def]
    comp = AbstractiveCompressor(backbone, min_support=0.0)  # keep whatever it writes
    r = comp.compress("Who was the duke in the battle of Hastings?", passages[:2], max_new_tokens=16)
    assert r.method == "abstractive" and r.spans == []
    assert r.tokens_before == comp.count_tokens("\n\n".join(passages[:2]))
    if r.decision == AUGMENT:
        assert r.text and r.tokens_after <= 16 and r.tokens_after == comp.count_tokens(r.text)
        f = r.faithfulness
        assert f is not None and 0.0 <= f.supported_ratio <= 1.0
        assert f.unsupported_words <= f.content_words
        assert r.score == pytest.approx(f.supported_ratio)
    else:
        assert r.text == "" and r.tokens_after == 0


def test_unsupported_summaries_are_dropped(backbone, passages: list[str]) -> None:  # type: ignore[no-untyped-def]
    strict = AbstractiveCompressor(backbone, min_support=1.01)  # no summary can pass
    r = strict.compress("Who was the duke in the battle of Hastings?", passages[:1], max_new_tokens=8)
    assert r.decision == SKIP and r.text == "" and r.tokens_after == 0


def test_oversized_input_names_the_limit(backbone, passages: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="max_input_tokens=64"):
        AbstractiveCompressor(backbone, max_input_tokens=64).compress("q?", passages)


def test_nothing_relevant_and_tidy() -> None:
    assert is_nothing("NOTHING RELEVANT") and is_nothing("Nothing relevant.") and is_nothing("  ")
    assert not is_nothing("The Normans came from Normandy.")
    loop = "Rollo led the Normans. They settled in France. Rollo led the Normans. They settled in France."
    assert tidy(loop, cut=False) == "Rollo led the Normans. They settled in France."
    assert tidy("Rollo led the Normans. They settled in", cut=True) == "Rollo led the Normans."
    assert tidy("Rollo led the Normans. They settled in", cut=False) == "Rollo led the Normans. They settled in"


def test_generation_is_bounded_and_batch_independent(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    prompts = [
        chat_ids(tiny_backbone, [{"role": "user", "content": text}])
        for text in ("hello", "a much longer prompt than the first one, to force left padding")
    ]
    together = generate(tiny_backbone, prompts, 6, batch_size=2)
    alone = [generate(tiny_backbone, [p], 6, batch_size=1)[0] for p in prompts]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]
    assert [g.text for g in together] == [g.text for g in alone]
    assert all(g.new_tokens <= 6 and g.prompt_tokens == len(p) for g, p in zip(together, prompts))


def test_prompt_and_summary_must_fit_the_model_context(tiny_backbone, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    """Under max_input_tokens (2048) is not enough: the tiny model reads 512 positions. A query of
    400 words used to run a 1575-token prompt and write up to position 1829 without a word."""
    from lodestar.compress_ctx.engine import CompressionEngine

    eng = CompressionEngine(tiny_backbone, tiny_engine)
    query = " ".join(f"word{i}" for i in range(400))
    with pytest.raises(InvalidInput, match="exceeds the model's context of 512 tokens") as err:
        eng.compress(query, ["The Normans gave their name to Normandy."], "abstractive", max_new_tokens=8)
    assert "max_new_tokens=8" in str(err.value)
    ok = eng.compress(
        "Who gave their name to Normandy?",
        ["The Normans gave their name to Normandy."],
        "abstractive",
        max_new_tokens=8,
    )
    assert ok.method == "abstractive"  # a request that fits still runs
