"""An embedder that only tokenises: what a sparse-only (dense='none', BM25) evaluation needs. Chunks
are cut by the model's tokens exactly as a served collection cuts them, but no weights are loaded
and any forward is refused, so `eval beir --retriever bm25` never runs the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lodestar.backbone import BackboneConfig
from lodestar.backbone.loader import load_tokenizer, resolve_source
from lodestar.embedding import EmbedOptions, EmbedResult
from lodestar.errors import Unavailable


@dataclass
class TokenizerBackbone:
    """The parts of a Backbone retrieval reads: the tokenizer and the model's id; width 0 (no vectors)."""

    tokenizer: Any
    model_id: str
    hidden_size: int = 0


class TokenizerOnly:
    """Fits `lodestar.embedding.Embedder` for collections with dense='none' and a BM25 sparse side."""

    def __init__(self, config: BackboneConfig) -> None:
        self.backbone = TokenizerBackbone(load_tokenizer(config), resolve_source(config.model)[2])

    def embed(self, texts: list[str], options: EmbedOptions | None = None, timeout: float | None = None) -> EmbedResult:
        raise Unavailable("no model is loaded (a sparse-only evaluation): this collection needs dense='none' and bm25")

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.backbone.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def check_mode(self, mode: str, prompt: str = "") -> None:
        """Any mode name passes: nothing is embedded."""

    def close(self) -> None:
        """Nothing to release (eval commands close their engine)."""
