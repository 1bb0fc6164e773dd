"""Retrieval-augmented speculative decoding: token datastore, draft trees, lossless verification."""

from __future__ import annotations

from lodestar.generate.costmodel import CostModel, OnlineCost
from lodestar.generate.datastore import CorruptDatastore, Datastore, LookupConfig, TokenizerIdentity
from lodestar.generate.decoder import DecoderConfig, SpeculativeDecoder
from lodestar.generate.drafter import DraftConfig, Drafter
from lodestar.generate.types import DecodeStats, GenerationChunk, GenerationParams, GenerationResult

__all__ = [
    "CorruptDatastore",
    "CostModel",
    "Datastore",
    "DecodeStats",
    "DecoderConfig",
    "DraftConfig",
    "Drafter",
    "GenerationChunk",
    "GenerationParams",
    "GenerationResult",
    "LookupConfig",
    "OnlineCost",
    "SpeculativeDecoder",
    "TokenizerIdentity",
]
