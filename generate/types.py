"""Domain types of the generate engine: draft candidates, request parameters, streamed chunks, results.

Plain dataclasses (no protobuf): the servicer converts these to and from the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Candidates:
    """Continuations one draft source proposes after the context's longest matched suffix.

    `seqs` holds distinct continuations with their (possibly sampled, rescaled) occurrence counts.
    """

    source: str  # "datastore" | "passages" | "context" | "self" (early exit)
    match_len: int  # tokens of context suffix that matched
    seqs: list[tuple[tuple[int, ...], float]]
    occurrences: int  # how often the matched suffix occurs (before sampling)


@dataclass(frozen=True)
class GenerationParams:
    """What a caller may set per request; the decoder validates it against its limits."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling only; None = fresh randomness
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these
    speculative: bool = True  # False = plain decoding, one token per forward
    self_draft_layers: int = 0  # > 0: also draft a chain from the backbone's first N layers (early exit)
    chat: bool = False  # wrap a text prompt as one user message with the model's chat template
    skip_special_tokens: bool = True


@dataclass
class DecodeStats:
    """Per-request counters: verification forwards and how many tokens each one produced."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0  # decode forwards after the prefill
    draft_tokens: int = 0  # tree nodes sent to verification (root excluded)
    accepted_draft_tokens: int = 0
    tokens_per_step: list[int] = field(default_factory=list)  # tokens each decode forward produced
    prefill_s: float = 0.0
    decode_s: float = 0.0
    draft_s: float = 0.0  # time spent building trees (inside decode_s)

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens produced per decode forward (1.0 for plain decoding)."""
        return sum(self.tokens_per_step) / len(self.tokens_per_step) if self.tokens_per_step else 0.0

    def as_dict(self) -> dict[str, Any]:
        total = self.prefill_s + self.decode_s
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "steps": self.steps,
            "draft_tokens": self.draft_tokens,
            "accepted_draft_tokens": self.accepted_draft_tokens,
            "mean_accepted_tokens": round(self.mean_accepted_tokens, 4),
            "prefill_s": round(self.prefill_s, 4),
            "decode_s": round(self.decode_s, 4),
            "draft_s": round(self.draft_s, 4),
            "tokens_per_s": round(self.generated_tokens / total, 3) if total > 0 else 0.0,
        }


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed piece: the tokens accepted by one step and the text they completed.

    `text` can lag the tokens (an incomplete UTF-8 character or a possible stop-string prefix is
    held back); the last chunk has `finish_reason` set and carries the stats.
    """

    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "length" | "eos" | "stop" | "cancelled"
    stats: DecodeStats | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: DecodeStats
