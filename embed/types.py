"""Request and result types of the embedding engine (no torch: the client uses them too)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lodestar.embed.output import Packed


SPARSE_CAP = 1024  # sparse weights kept per text by the forward; a request's top_k cuts further
SPARSE_SHIFT = 4.0  # learned sparse: a vocabulary entry counts once its logit is this many standard deviations above the mean


@dataclass(frozen=True)
class EmbedOptions:
    mode: str = ""  # empty: the engine's default mode
    prompt: str = ""
    instruction: str = ""
    adapter: str = ""
    dimensions: int = 0  # 0: all
    normalize: bool = True
    dtype: str = "float32"
    truncate: bool = True
    max_tokens: int = 0  # 0: the engine's limit
    start_layer: int | None = None  # token_prepend overrides
    end_layer: int | None = None
    output_layer: int | None = None
    sparse: bool = False  # learned-sparse output (SPLADE weights from the LM head)
    sparse_top_k: int = 0  # 0 = DEFAULT_SPARSE_TOP_K
    sparse_threshold: float = 0.0
    with_dense: bool = True  # with sparse: also return the dense vectors
    sparse_tokens: bool = False  # with sparse: also each id's vocabulary entry (EmbedResult.sparse_tokens)


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (N, D) float32 after prefix/normalisation
    packed: Packed
    token_counts: list[int]
    truncated: list[bool]
    model: str
    mode: str
    sparse: list[tuple[np.ndarray, np.ndarray]] | None = None  # per text (token ids, weights), by weight
    sparse_tokens: list[list[str]] | None = None  # per text, the vocabulary entry of each sparse id
    has_dense: bool = True
