"""The served-embedding benchmark's bookkeeping (the benchmark itself is run by `make bench`)."""

from __future__ import annotations

from lodestar.backbone import Backbone
from lodestar.bench.served import _sorted_by_length
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.embed.types import EmbedOptions


def test_any_number_of_texts_is_sorted_by_length(tiny_backbone: Backbone) -> None:
    """`lodestar bench embed --texts F` failed on any file over max_texts_per_request (1,024) texts."""
    engine = EmbeddingEngine(tiny_backbone, EngineConfig(max_texts_per_request=4))
    try:
        texts = ["word " * n for n in (5, 1, 9, 3, 7, 2, 8, 4, 6, 10)]
        ordered, counts = _sorted_by_length(engine, texts, EmbedOptions())
        assert sorted(ordered) == sorted(texts) and counts == sorted(counts) and len(counts) == 10
        assert ordered[0] == "word " and ordered[-1] == "word " * 10
    finally:
        engine.close()
