"""A tiny random Llama built in code, and paths shared by the test suites (importable as `tinymodel`
because tests/ is on sys.path; a name no other conftest shadows)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lodestar.backbone import Backbone, BackboneConfig

FIXTURES = Path(__file__).parent / "fixtures"
CACHE_DIR = Path(os.environ.get("LODESTAR_CACHE_DIR", Path.home() / ".cache" / "lodestar"))


def build_tiny(tokenizer, layers: int = 4, seed: int = 0) -> Backbone:  # type: ignore[no-untyped-def]
    """A randomly initialised Llama small enough to run in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).float().eval()
    return Backbone.from_model(model, tokenizer, "tiny-llama", BackboneConfig(model="tiny", cache_dir=CACHE_DIR))
