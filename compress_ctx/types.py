"""Request and result types of context compression (no torch, no gRPC: the client uses them too)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("extractive", "abstractive")
ORDERS = ("original", "score")  # selected sentences in passage order, or best first

AUGMENT = "augment"  # the decision: send the compressed context
SKIP = "skip"  # the decision: send no context (selective augmentation, or nothing relevant)


@dataclass(frozen=True)
class Span:
    """One kept sentence: passages[passage][start:end], and its relevance score."""

    passage: int
    start: int
    end: int
    score: float


@dataclass
class Faithfulness:
    """Words of an abstractive summary that no passage contains (a hallucination signal)."""

    content_words: int  # content words in the summary (stopwords and punctuation left out)
    unsupported_words: int = 0  # how many of those (occurrences) no passage contains
    unsupported: list[str] = field(default_factory=list)  # the distinct unsupported words, in order

    @property
    def supported_ratio(self) -> float:
        """Share of the summary's content words found in the passages (1.0 for no content words)."""
        if self.content_words == 0:
            return 1.0
        return 1.0 - self.unsupported_words / self.content_words


@dataclass
class CompressResult:
    method: str
    text: str  # the compressed context; "" when the decision is SKIP
    spans: list[Span]  # extractive: kept sentences in output order; abstractive: []
    tokens_before: int  # backbone tokens of the passages joined as the uncompressed context
    tokens_after: int  # backbone tokens of `text`
    decision: str  # AUGMENT or SKIP
    score: float | None  # what the decision was made on: extractive best sentence score,
    #                      abstractive supported-word ratio; None when nothing was scored
    threshold: float | None  # the cut applied to `score` (None: selective augmentation off)
    reason: str  # one line saying why (for logs and clients)
    seconds: float = 0.0
    faithfulness: Faithfulness | None = None  # abstractive only

    @property
    def compression_rate(self) -> float:
        """tokens after / tokens before (0.0 for an empty result)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 0.0


def join_passages(passages: list[str]) -> str:
    """The uncompressed context as a reader sees it: passages separated by a blank line."""
    return "\n\n".join(p.strip() for p in passages if p.strip())
