"""A tiny random Llama built in code, and paths shared by the test suites (importable as `tinymodel`
because tests/ is on sys.path; a name no other conftest shadows)."""

from __future__ import annotations

import os
from pathlib import Path

from lodestar.backbone import Backbone, BackboneConfig

FIXTURES = Path(__file__).parent / "fixtures"
CACHE_DIR = Path(os.environ.get("LODESTAR_CACHE_DIR", Path.home() / ".cache" / "lodestar"))


def build_tiny(tokenizer, layers: int = 4, seed: int = 0) -> Backbone:  # type: ignore[no-untyped-def]
    """A randomly initialised Llama small enough to run in milliseconds."""
    from lodestar.bench.chaos.server import tiny_llama

    model = tiny_llama(tokenizer, layers, seed)
    return Backbone.from_model(model, tokenizer, "tiny-llama", BackboneConfig(model="tiny", cache_dir=CACHE_DIR))
