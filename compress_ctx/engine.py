"""The compression engine: validates a request, runs the extractive or abstractive compressor, and
applies selective augmentation. Plain Python: no gRPC here; the servicer maps proto <-> these types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lodestar.backbone import Backbone
from lodestar.compress_ctx.abstractive import AbstractiveCompressor
from lodestar.compress_ctx.cache import VectorCache
from lodestar.compress_ctx.extractive import (
    DEFAULT_LEXICAL_WEIGHT,
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_OPTIONS,
    DEFAULT_PASSAGE_WEIGHT,
    ExtractiveCompressor,
)
from lodestar.compress_ctx.types import METHODS, ORDERS, SKIP, CompressResult
from lodestar.embedding import EmbedOptions, TextEmbedder
from lodestar.errors import InvalidInput
from lodestar.telemetry import NOOP, Telemetry

# Selective-augmentation threshold for the default scorer (DEFAULT_OPTIONS, DEFAULT_LEXICAL_WEIGHT),
# calibrated on SQuAD dev questions disjoint from the benchmark's (bench/compress/run.py).
DEFAULT_THRESHOLD = 0.30


@dataclass(frozen=True)
class CompressConfig:
    max_passages: int = 100
    max_passage_chars: int = 100_000
    max_query_chars: int = 4_000
    max_input_tokens: int = 16_384  # all passages together, extractive
    max_abstractive_input_tokens: int = 2_048  # prompt + passages of the abstractive compressor
    max_summary_tokens: int = 256  # upper bound a request may ask for
    summary_tokens: int = 64  # abstractive default
    min_support: float = 0.5  # abstractive: drop a summary with fewer supported content words
    # abstractive: the model reads the best sentences within this many tokens (extractive pre-selection),
    # not the whole passages: its input stays bounded and it runs ~20% faster; on 16 SQuAD dev
    # questions the answer survived in 4 summaries against 5 without it (not a significant gap). 0 = off.
    preselect_tokens: int = 256
    default_budget_ratio: float = 0.15  # extractive default when a request sets no budget nor top_n
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    passage_weight: float = DEFAULT_PASSAGE_WEIGHT
    max_candidates: int = DEFAULT_MAX_CANDIDATES  # sentences embedded per request (best lexical first; 0 = all)
    threshold: float = DEFAULT_THRESHOLD  # for the default options only
    cache_entries: int = 65_536  # sentence vectors kept


class CompressionEngine:
    def __init__(self, backbone: Backbone, embedder: TextEmbedder, config: CompressConfig | None = None) -> None:
        self.backbone = backbone
        self.embedder = embedder
        self.config = config or CompressConfig()
        self.cache = VectorCache(self.config.cache_entries)
        self.telemetry: Telemetry = NOOP  # the server sets its metrics here
        self.extractive = ExtractiveCompressor(
            embedder,
            lexical_weight=self.config.lexical_weight,
            passage_weight=self.config.passage_weight,
            max_candidates=self.config.max_candidates,
            cache=self.cache,
        )
        self.abstractive = AbstractiveCompressor(
            backbone,
            max_new_tokens=self.config.summary_tokens,
            max_input_tokens=self.config.max_abstractive_input_tokens,
            min_support=self.config.min_support,
        )

    def count_tokens(self, text: str) -> int:
        return self.extractive.count_tokens(text)

    # --- validation --------------------------------------------------------------------------

    def _validate(
        self,
        query: str,
        passages: list[str],
        method: str,
        budget_tokens: int | None,
        budget_ratio: float | None,
        top_n: int | None,
        order: str,
        max_new_tokens: int | None,
    ) -> None:
        c = self.config
        if method not in METHODS:
            raise InvalidInput(f"unknown method {method!r}: valid are {', '.join(METHODS)}")
        if order not in ORDERS:
            raise InvalidInput(f"unknown order {order!r}: valid are {', '.join(ORDERS)}")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query is empty")
        if len(query) > c.max_query_chars:
            raise InvalidInput(f"query has {len(query)} characters; the limit is max_query_chars={c.max_query_chars}")
        if not passages:
            raise InvalidInput(f"passages is empty: send 1 to {c.max_passages} passages")
        if len(passages) > c.max_passages:
            raise InvalidInput(f"{len(passages)} passages in one request; the limit is max_passages={c.max_passages}")
        for i, p in enumerate(passages):
            if not isinstance(p, str) or not p.strip():
                raise InvalidInput(f"passage {i} is empty")
            if len(p) > c.max_passage_chars:
                raise InvalidInput(
                    f"passage {i} has {len(p)} characters; the limit is max_passage_chars={c.max_passage_chars}"
                )
        if budget_tokens is not None and budget_tokens <= 0:
            raise InvalidInput(f"budget_tokens must be > 0 (or unset for no token budget); got {budget_tokens}")
        if budget_ratio is not None and not 0.0 < budget_ratio <= 1.0:
            raise InvalidInput(f"budget_ratio must be in (0, 1] (or unset); got {budget_ratio}")
        if top_n is not None and top_n <= 0:
            raise InvalidInput(f"top_n must be > 0 (or unset for no count limit); got {top_n}")
        if max_new_tokens is not None and not 0 < max_new_tokens <= c.max_summary_tokens:
            raise InvalidInput(
                f"max_new_tokens must be in 1..{c.max_summary_tokens} (max_summary_tokens); got {max_new_tokens}"
            )
        total = sum(len(ids) for ids in self.backbone.tokenizer(passages, add_special_tokens=False)["input_ids"])
        if total > c.max_input_tokens:
            raise InvalidInput(f"the passages hold {total} tokens; the limit is max_input_tokens={c.max_input_tokens}")

    def _threshold(
        self, threshold: float | None, options: EmbedOptions | None, query_options: EmbedOptions | None
    ) -> float:
        if threshold is not None:
            if not math.isfinite(threshold):  # NaN compares false: nothing would ever be skipped
                raise InvalidInput(f"threshold must be a finite similarity score; got {threshold}")
            return float(threshold)
        if (options is None or options == DEFAULT_OPTIONS) and (
            query_options is None or query_options == DEFAULT_OPTIONS
        ):
            return self.config.threshold
        raise InvalidInput(
            "selective augmentation needs a threshold calibrated for these embedding options (the default "
            f"threshold {self.config.threshold} is for mode={DEFAULT_OPTIONS.mode!r} without prompt, instruction "
            "or adapter): pass threshold (lodestar.compress_ctx.eval.selective.calibrate_threshold fits one)"
        )

    # --- entry point -------------------------------------------------------------------------

    def compress(
        self,
        query: str,
        passages: list[str],
        method: str = "extractive",
        *,
        budget_tokens: int | None = None,
        budget_ratio: float | None = None,
        top_n: int | None = None,
        order: str = "original",
        selective: bool = False,
        threshold: float | None = None,
        max_new_tokens: int | None = None,
        options: EmbedOptions | None = None,
        query_options: EmbedOptions | None = None,
        adapter: str = "",
    ) -> CompressResult:
        """Compress `passages` for `query`.

        extractive: best sentences within min(budget_tokens, budget_ratio x input tokens) and top_n
        (none set: budget_ratio = config.default_budget_ratio), in `order`; `options` / `query_options`
        pick the embedding mode/prompt/instruction/adapter for sentences / the query.
        abstractive: a summary of at most max_new_tokens tokens, or SKIP when the model finds nothing;
        `adapter` names a LoRA summariser (`lodestar train compressor --kind abstractive`).
        selective: SKIP (empty context) when the best sentence score is below `threshold` (default:
        the calibrated one for the default options). Abstractive always decides on its own: SKIP when
        the model says nothing is relevant or its summary is unsupported (config.min_support).
        """
        self._validate(query, passages, method, budget_tokens, budget_ratio, top_n, order, max_new_tokens)
        if adapter and method != "abstractive":
            raise InvalidInput(
                "adapter is the abstractive summariser's; an extractive scorer's adapter goes in the "
                "sentence/query embedding options"
            )
        if method == "abstractive":
            if adapter:
                self.backbone.adapters.resolve(adapter)  # unknown -> InvalidInput naming the valid ones
            result = self.abstractive_many([query], [passages], max_new_tokens=max_new_tokens, adapter=adapter)[0]
            self.telemetry.compressed(result.tokens_before, result.tokens_after)
            return result
        if budget_tokens is None and budget_ratio is None and top_n is None:
            budget_ratio = self.config.default_budget_ratio
        cut = self._threshold(threshold, options, query_options) if selective else None
        result = self.extractive.compress(
            query,
            passages,
            budget_tokens=budget_tokens or 0,
            budget_ratio=budget_ratio or 0.0,
            top_n=top_n or 0,
            order=order,
            threshold=cut,
            options=options,
            query_options=query_options,
        )
        self.telemetry.compressed(result.tokens_before, result.tokens_after)
        return result

    def abstractive_many(
        self,
        queries: list[str],
        passage_lists: list[list[str]],
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 4,
        adapter: str = "",
    ) -> list[CompressResult]:
        """Abstractive summaries for several validated requests in one batched generation, each
        reading its extractive pre-selection when config.preselect_tokens is set."""
        views = None
        pre_s = 0.0
        if self.config.preselect_tokens:
            views = []
            for q, ps in zip(queries, passage_lists):
                pre = self.extractive.compress(q, ps, budget_tokens=self.config.preselect_tokens)
                views.append([pre.text] if pre.text else ps)
                pre_s += pre.seconds
        results = self.abstractive.compress_many(
            queries,
            passage_lists,
            views=views,
            max_new_tokens=max_new_tokens or 0,
            batch_size=batch_size,
            adapter=adapter or None,
        )
        for r in results:
            r.seconds += pre_s / len(results)
        return results

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "methods": list(METHODS),
            "orders": list(ORDERS),
            "default_options": DEFAULT_OPTIONS.__dict__,
            "lexical_weight": c.lexical_weight,
            "passage_weight": c.passage_weight,
            "max_candidates": c.max_candidates,
            "threshold": c.threshold,
            "max_passages": c.max_passages,
            "max_input_tokens": c.max_input_tokens,
            "max_abstractive_input_tokens": c.max_abstractive_input_tokens,
            "max_summary_tokens": c.max_summary_tokens,
            "preselect_tokens": c.preselect_tokens,
            "skip_decision": SKIP,
        }
