"""The contract between an embedding engine and the engines that use it (DESIGN.md, dependency direction).

Retrieval and compression take an embedder as a constructor argument typed by these Protocols, and
exchange these small value types with it, so neither imports `lodestar.embed`;
`lodestar.embed.engine.EmbeddingEngine` fits both Protocols. No torch here: the client uses the
value types too (`lodestar.embed.types` and `lodestar.embed.output` re-export them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SPARSE_CAP = 1024  # sparse weights kept per text by the forward; a request's top_k cuts further


@dataclass
class Packed:
    """Row-major bytes plus the logical shape (rows, dimensions) and dtype name."""

    data: bytes
    shape: tuple[int, int]
    dtype: str


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


class TextEmbedder(Protocol):
    """What compression needs: the model (`backbone.tokenizer`, `.hidden_size`, `.model_id`) and `embed`."""

    backbone: Any

    def embed(
        self, texts: list[str], options: EmbedOptions | None = None, timeout: float | None = None
    ) -> EmbedResult: ...


class Embedder(TextEmbedder, Protocol):
    """What retrieval needs: also token spans (chunking by tokens) and mode checks (collection configs)."""

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...

    def check_mode(self, mode: str, prompt: str = "") -> None:
        """Raise InvalidInput if `mode` is no embedding mode (listing the valid ones), or `prompt` ("" = the
        mode's default) does not fit it."""
        ...
