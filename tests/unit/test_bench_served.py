"""The served-embedding benchmark's bookkeeping (the benchmark itself is run by `make bench`)."""

from __future__ import annotations

from dataclasses import asdict

from lodestar.backbone import Backbone
from lodestar.bench.served import _batcher_stats, _sorted_by_length, _stats_delta, _stats_sum
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


def test_batcher_summary_reports_the_batch_size_histogram_of_the_timed_runs(tiny_backbone: Backbone) -> None:
    """The JSON carries, beside throughput, how many texts each forward of the timed runs held."""
    engine = EmbeddingEngine(tiny_backbone)
    try:
        engine.embed(["warm-up"])  # before the snapshot: not counted
        total: dict = {}
        for texts in (["a b c"] * 5, ["d e f g"] * 3):
            before = asdict(engine.batcher.stats)
            engine.embed(texts)
            total = _stats_sum(total, _stats_delta(before, asdict(engine.batcher.stats)))
        summary = _batcher_stats(total)
        assert summary["batches"] == 2 and summary["mean_batch_texts"] == 4.0
        assert summary["batch_sizes"] == {"3": 1, "5": 1}
        assert summary["batch_size_histogram"] == {"2-3": 1, "4-7": 1}
    finally:
        engine.close()
