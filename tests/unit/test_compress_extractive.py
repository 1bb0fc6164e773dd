"""Extractive compression and the engine's validation, on the real bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.compress_ctx.engine import CompressConfig, CompressionEngine
from lodestar.compress_ctx.types import AUGMENT, SKIP
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compress"
QUERY = "Who was the duke in the battle of Hastings?"


@pytest.fixture(scope="module")
def passages() -> list[str]:
    with open(FIXTURES / "beir" / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def compressor(backbone, engine) -> CompressionEngine:  # type: ignore[no-untyped-def]
    return CompressionEngine(backbone, engine)


def test_keeps_the_answer_within_the_budget_with_exact_spans(
    compressor: CompressionEngine, passages: list[str]
) -> None:
    r = compressor.compress(QUERY, passages, budget_tokens=60)
    assert r.decision == AUGMENT and r.method == "extractive"
    assert "William the Conqueror" in r.text
    assert 0 < r.tokens_after <= 60
    assert r.tokens_after == compressor.count_tokens(r.text)
    assert r.tokens_before == compressor.count_tokens("\n\n".join(passages))
    assert r.compression_rate == pytest.approx(r.tokens_after / r.tokens_before)
    assert [(s.passage, s.start) for s in r.spans] == sorted((s.passage, s.start) for s in r.spans)
    for s in r.spans:
        assert passages[s.passage][s.start : s.end] in r.text
    assert r.score == max(s.score for s in r.spans)


def test_top_n_and_score_order(compressor: CompressionEngine, passages: list[str]) -> None:
    one = compressor.compress(QUERY, passages, top_n=1)
    assert len(one.spans) == 1 and "Hastings" in one.text
    by_score = compressor.compress(QUERY, passages, top_n=3, order="score")
    scores = [s.score for s in by_score.spans]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert by_score.text.split("\n")[0] == one.text  # best first
    ratio = compressor.compress(QUERY, passages, budget_ratio=0.1)
    assert ratio.tokens_after <= int(0.1 * ratio.tokens_before)


def test_sentence_vectors_are_cached(compressor: CompressionEngine, passages: list[str]) -> None:
    first = compressor.compress(QUERY, passages, budget_tokens=60)
    hits = compressor.cache.hits
    again = compressor.compress(QUERY, passages, budget_tokens=60)
    assert compressor.cache.hits > hits
    assert again.spans == first.spans


def test_selective_augmentation_and_the_empty_path(compressor: CompressionEngine, passages: list[str]) -> None:
    skipped = compressor.compress(QUERY, passages, budget_tokens=60, selective=True, threshold=5.0)
    assert skipped.decision == SKIP and skipped.text == "" and skipped.spans == [] and skipped.tokens_after == 0
    assert skipped.score is not None and skipped.threshold == 5.0 and "below the threshold" in skipped.reason
    kept = compressor.compress(QUERY, passages, budget_tokens=60, selective=True, threshold=-5.0)
    assert kept.decision == AUGMENT and kept.text
    tiny = compressor.compress(QUERY, passages, budget_tokens=1)
    assert tiny.decision == SKIP and tiny.text == "" and "budget of 1 tokens" in tiny.reason
    # An off-topic question scores below the on-topic one.
    off = compressor.compress("What is the boiling point of mercury on Mars?", passages, budget_tokens=60)
    assert off.score is not None and kept.score is not None and off.score < kept.score


def test_bad_input_names_the_limit_or_the_valid_values(backbone, engine, passages: list[str]) -> None:  # type: ignore[no-untyped-def]
    c = CompressionEngine(backbone, engine, CompressConfig(max_passages=3, max_input_tokens=400))
    cases = [
        (dict(passages=[]), "passages is empty: send 1 to 3"),
        (dict(passages=passages[:4]), "max_passages=3"),
        (dict(passages=passages[:3]), "max_input_tokens=400"),
        (dict(passages=["ok.", "  "]), "passage 1 is empty"),
        (dict(budget_tokens=0), "budget_tokens must be > 0"),
        (dict(budget_tokens=-5), "budget_tokens must be > 0"),
        (dict(budget_ratio=1.5), "budget_ratio must be in (0, 1]"),
        (dict(top_n=0), "top_n must be > 0"),
        (dict(method="lossy"), "valid are extractive, abstractive"),
        (dict(order="random"), "valid are original, score"),
        (dict(query="  "), "query is empty"),
        (dict(method="abstractive", max_new_tokens=10_000), "max_summary_tokens"),
        (dict(selective=True, options=EmbedOptions(mode="mean")), "pass threshold"),
        (dict(selective=True, threshold=float("nan")), "threshold must be a finite similarity score; got nan"),
        (dict(selective=True, threshold=float("-inf")), "threshold must be a finite similarity score; got -inf"),
    ]
    for kwargs, message in cases:
        args = {"query": QUERY, "passages": passages[:1], **kwargs}
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            c.compress(**args)
