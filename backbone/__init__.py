"""Loads the decoder LLM (bundled GGUF, Hugging Face folder, GGUF path) and its LoRA adapters."""

from __future__ import annotations

from lodestar.backbone.adapters import AdapterRegistry
from lodestar.backbone.devices import resolve_device, resolve_dtype
from lodestar.backbone.loader import Backbone, BackboneConfig, load_backbone

__all__ = [
    "AdapterRegistry",
    "Backbone",
    "BackboneConfig",
    "load_backbone",
    "resolve_device",
    "resolve_dtype",
]
