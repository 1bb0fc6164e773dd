"""Shared fixtures: the real bundled model loaded once per session, and a tiny random Llama built in
code (with the bundled tokenizer) for fast shape and edge-case tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lodestar.backbone import Backbone, BackboneConfig, load_backbone
from lodestar.backbone.loader import bundled_gguf, dequantised_cache

FIXTURES = Path(__file__).parent / "fixtures"
CACHE_DIR = Path(os.environ.get("LODESTAR_CACHE_DIR", Path.home() / ".cache" / "lodestar"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled_folder() -> Path:
    """The bundled GGUF dequantised into the safetensors cache (done once per machine)."""
    return dequantised_cache(bundled_gguf(), CACHE_DIR)


@pytest.fixture(scope="session")
def tokenizer(bundled_folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_folder)


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


@pytest.fixture(scope="session")
def tiny_backbone(tokenizer) -> Backbone:  # type: ignore[no-untyped-def]
    return build_tiny(tokenizer)


@pytest.fixture(scope="session")
def backbone() -> Backbone:
    """The real bundled SmolLM2-135M-Instruct, loaded once per session."""
    return load_backbone(BackboneConfig(cache_dir=CACHE_DIR, adapter_dirs=(FIXTURES / "adapters",)))


@pytest.fixture(scope="session")
def engine(backbone: Backbone) -> Iterator:  # type: ignore[type-arg]
    from lodestar.embed.engine import EmbeddingEngine

    eng = EmbeddingEngine(backbone)
    yield eng
    eng.close()


@pytest.fixture
def tiny_engine(tiny_backbone: Backbone) -> Iterator:  # type: ignore[type-arg]
    from lodestar.embed.engine import EmbeddingEngine

    eng = EmbeddingEngine(tiny_backbone)
    yield eng
    eng.close()
