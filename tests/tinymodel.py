"""The tiny random Llama as a Backbone (built by lodestar.bench.tinymodel), a forward counter, and
paths shared by the test suites (importable as `tinymodel` because tests/ is on sys.path; a name no
other conftest shadows)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from lodestar.backbone import Backbone, BackboneConfig

FIXTURES = Path(__file__).parent / "fixtures"
CACHE_DIR = Path(os.environ.get("LODESTAR_CACHE_DIR", Path.home() / ".cache" / "lodestar"))


def build_tiny(tokenizer, layers: int = 4, seed: int = 0) -> Backbone:  # type: ignore[no-untyped-def]
    """A randomly initialised Llama small enough to run in milliseconds (lodestar.bench.tinymodel's)."""
    from lodestar.bench.tinymodel import tiny_llama

    model = tiny_llama(tokenizer, layers, seed)
    return Backbone.from_model(model, tokenizer, "tiny-llama", BackboneConfig(model="tiny", cache_dir=CACHE_DIR))


class Forwards:
    """Counts the forwards of every decoder stack; calls `cancel` when the `cancel_at`-th one starts
    and counts the forwards that start after that."""

    def __init__(self, cancel: Callable[[], object] | None, cancel_at: int) -> None:
        self.cancel = cancel
        self.cancel_at = cancel_at
        self.total = 0
        self.after_cancel = 0

    def __call__(self, module: torch.nn.Module, args: Any) -> None:
        if not isinstance(module, PreTrainedModel) or not hasattr(module, "embed_tokens"):
            return  # only the decoder stack's forwards (embedding and generation both run it), not its layers
        if self.cancel is not None and self.total >= self.cancel_at:
            self.after_cancel += 1
        self.total += 1
        if self.cancel is not None and self.total == self.cancel_at:
            self.cancel()


@contextmanager
def counting(cancel: Callable[[], object] | None = None, cancel_at: int = 0) -> Iterator[Forwards]:
    counter = Forwards(cancel, cancel_at)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(counter)
    try:
        yield counter
    finally:
        handle.remove()
