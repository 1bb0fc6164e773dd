"""The tiny random Llama the tests and the chaos suite run on, built in code (one place for both:
tests/tinymodel.py wraps it as a Backbone, bench/chaos saves it as a model folder for `lodestar
serve` processes). Under lodestar.bench, so `lodestar serve` never imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_shape(tokenizer: Any, layers: int = 4) -> dict[str, Any]:
    """The tiny decoder's config keywords (any Llama-like family takes them: Mistral, Qwen2 too)."""
    return dict(
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


def tiny_llama(tokenizer: Any, layers: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Llama small enough to run in milliseconds (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**tiny_shape(tokenizer, layers))).float().eval()


def tiny_model(folder: Path, layers: int = 4) -> Path:
    """`tiny_llama` with the bundled model's tokenizer, saved as a model folder: fast enough for
    hundreds of server starts (the chaos suite tests the server, not the model)."""
    from transformers import AutoTokenizer

    from lodestar.backbone.loader import bundled_gguf, dequantised_cache
    from lodestar.services.settings import Settings

    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(dequantised_cache(bundled_gguf(), Settings().cache_dir))
    tiny_llama(tokenizer, layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
