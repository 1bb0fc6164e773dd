"""Transformers renamed the KV cache argument and output (`past_key_values` -> `cache`, 5.x); the
old names warn on every forward. These two helpers speak whichever the installed version knows."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def _cache_arg(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """{<the forward's cache argument>: cache} for `model(...)`."""
    return {_cache_arg(type(model).forward): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
