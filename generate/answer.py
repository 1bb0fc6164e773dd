"""The Answer pipeline: retrieve from a collection -> compress -> generate, drafting from the passages.

Plain Python over three engines (no gRPC): the servicer converts the request, iterates this, and
converts each item. The first item is an `AnswerStart` (sources and the context the model reads);
the rest are the generation's chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from lodestar.compress_ctx.engine import CompressionEngine
from lodestar.compress_ctx.types import AUGMENT, SKIP, join_passages
from lodestar.errors import InvalidInput
from lodestar.generate.decoder import Cancel
from lodestar.generate.engine import GenerationEngine
from lodestar.generate.prompts import rag_prompt
from lodestar.generate.types import GenerationChunk, GenerationParams
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.types import Filter, Hit, SearchRequest
from lodestar.telemetry import NOOP, Telemetry

COMPRESSIONS = ("extractive", "abstractive", "none")
MAX_K = 50
# Hybrid retrieval for answers: the collection's calibrated fusion (retrieve/calibrate.py), as Search.
# An explicit weighted fusion without alpha keeps the small dense weight picked on Cranfield and CISI
# (alpha 0.15; bench/results/beir_*.jsonl).
HYBRID_FUSION, HYBRID_ALPHA = "auto", 0.15
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_PARAMS = GenerationParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    collection: str
    k: int = 5
    retriever: str = ""  # "" = hybrid when the collection keeps a sparse side, else dense
    filters: tuple[Filter, ...] = ()
    compression: str = "extractive"
    budget_tokens: int | None = None
    selective: bool = False
    params: GenerationParams = DEFAULT_PARAMS
    datastore: str = ""
    fusion: str = ""  # "" = HYBRID_FUSION (with HYBRID_ALPHA unless alpha is given)
    alpha: float | None = None
    rrf_k: int | None = None
    threshold: float | None = None  # selective: None = the compressor's calibrated default
    feedback_chunks: int = 0  # learned sparse: pseudo-relevance feedback, as in Search
    feedback_weight: float = 1.0  # that feedback's weight, as in Search
    length_norm: float = 0.0  # learned sparse: chunk length normalisation, as in Search


@dataclass(frozen=True)
class AnswerStart:
    sources: list[Hit]
    context: str  # what the model reads; "" = closed-book (nothing retrieved, or selective skip)
    decision: str  # augment | skip
    context_tokens: int
    passage_tokens: int


class AnswerPipeline:
    def __init__(
        self,
        retrieval: RetrievalEngine,
        compression: CompressionEngine,
        generation: GenerationEngine,
        telemetry: Telemetry = NOOP,
    ) -> None:
        self.telemetry = telemetry  # a span per stage: retrieve, compress, generate
        self.retrieval = retrieval
        self.compression = compression
        self.generation = generation

    def _validate(self, r: AnswerRequest) -> None:
        if not r.question.strip():
            raise InvalidInput("question is empty")
        if not 1 <= r.k <= MAX_K:
            raise InvalidInput(f"k must be in 1..{MAX_K}; got {r.k}")
        if r.compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {r.compression!r}: valid are {', '.join(COMPRESSIONS)}")

    def answer(self, r: AnswerRequest, cancel: Cancel = None) -> Iterator[AnswerStart | GenerationChunk]:
        """Validate, take a generation slot (Overloaded before any retrieval work when none is free),
        retrieve and compress now; -> an iterator whose first item is the AnswerStart."""
        self._validate(r)
        slot = self.generation.admit()
        try:
            return self._answer(r, cancel, slot)
        except BaseException:
            slot()
            raise

    def _answer(self, r: AnswerRequest, cancel: Cancel, slot: Any) -> Iterator[AnswerStart | GenerationChunk]:
        config = self.retrieval.config(r.collection)
        retriever = r.retriever or (
            "dense" if config.sparse == "none" else "sparse" if config.dense == "none" else "hybrid"
        )
        fusion = r.fusion or HYBRID_FUSION
        tuning: dict[str, Any] = {}
        if r.alpha is not None:  # passed on whatever the fusion, so Search's range check sees it
            tuning["alpha"] = r.alpha
        elif fusion == "weighted":
            tuning["alpha"] = HYBRID_ALPHA
        if r.rrf_k is not None:
            tuning["rrf_k"] = r.rrf_k
        if r.feedback_chunks:
            tuning |= {"feedback_chunks": r.feedback_chunks, "feedback_weight": r.feedback_weight}
        if r.length_norm:
            tuning["length_norm"] = r.length_norm
        request = SearchRequest([r.question], k=r.k, retriever=retriever, filters=r.filters, fusion=fusion, **tuning)
        with self.telemetry.stage("retrieve"):
            hits = self.retrieval.search(r.collection, request)[0]
        passages = [h.chunk_text or h.text for h in hits]
        passages = [p for p in passages if p.strip()]
        with self.telemetry.stage("compress"):
            start = self._context(r, hits, passages)
        params = replace(r.params, chat=True)
        chunks = self.generation.stream(
            rag_prompt(r.question, start.context), params, passages or None, r.datastore, cancel, slot=slot
        )
        return self._chain(start, chunks, self.telemetry)

    def _context(self, r: AnswerRequest, hits: list[Hit], passages: list[str]) -> AnswerStart:
        if not passages:
            return AnswerStart(hits, "", SKIP, 0, 0)
        if r.compression == "none":
            text = join_passages(passages)
            n = self.compression.count_tokens(text)
            return AnswerStart(hits, text, AUGMENT, n, n)
        kwargs: dict[str, Any] = {"selective": r.selective} if r.compression == "extractive" else {}
        if r.selective and r.threshold is not None:
            kwargs["threshold"] = r.threshold
        if r.budget_tokens is not None:
            kwargs["budget_tokens"] = r.budget_tokens
        result = self.compression.compress(r.question, passages, r.compression, **kwargs)
        return AnswerStart(hits, result.text, result.decision, result.tokens_after, result.tokens_before)

    @staticmethod
    def _chain(
        start: AnswerStart, chunks: Iterator[GenerationChunk], telemetry: Telemetry
    ) -> Iterator[AnswerStart | GenerationChunk]:
        try:
            yield start
            with telemetry.stage("generate"):
                yield from chunks
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
