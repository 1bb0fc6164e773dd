"""Backend dispatch for the embedding hot-path ops: Triton when it can run, PyTorch otherwise.

Triton is imported lazily, on the first call that could actually use it, so importing
``lodestar.kernels`` stays cheap and works on machines without triton.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from .reference import l2_normalize_ref, masked_mean_pool_ref, validate_normalize_input, validate_pool_inputs

__all__ = [
    "BACKENDS",
    "Backend",
    "available_backends",
    "resolve_backend",
    "masked_mean_pool",
    "l2_normalize",
]

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")

# Values triton itself treats as "on" for TRITON_INTERPRET.
_TRUTHY = frozenset({"1", "true", "on", "yes"})


def _interpret_requested() -> bool:
    """Whether TRITON_INTERPRET asks for the Triton interpreter (lets kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


@functools.lru_cache(maxsize=1)
def _load_triton() -> tuple[ModuleType | None, str]:
    """Import the triton kernel module once; return (module, "") or (None, why it failed)."""
    try:
        from . import triton_pooling
    except ImportError as exc:
        return None, str(exc)
    return triton_pooling, ""


def _triton_blocker(tensor: Tensor) -> str | None:
    """Say why the triton backend cannot handle this tensor, or None if it can."""
    if tensor.device.type != "cuda" and not _interpret_requested():
        # Checked before importing triton so CPU-only callers never pay for the import.
        return (
            f"tensor is on {tensor.device}: the triton backend needs a CUDA tensor, "
            "or TRITON_INTERPRET=1 in the environment to run CPU tensors through the Triton interpreter"
        )
    module, error = _load_triton()
    if module is None:
        return f"triton is not available ({error})"
    return module.unsupported_reason(tensor)


def _check_backend_name(backend: str) -> None:
    """Reject unknown backend names with a message listing the valid ones."""
    if backend not in BACKENDS:
        choices = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"unknown backend {backend!r}; valid choices are {choices}")


def resolve_backend(backend: str, tensor: Tensor) -> Literal["torch", "triton"]:
    """Turn a requested backend into the concrete one used for this tensor; raise ValueError if impossible."""
    _check_backend_name(backend)
    if backend == "torch":
        return "torch"
    blocker = _triton_blocker(tensor)
    if backend == "triton":
        if blocker is not None:
            raise ValueError(f"backend='triton' cannot be used: {blocker}")
        return "triton"
    return "torch" if blocker is not None else "triton"  # auto


def available_backends() -> tuple[str, ...]:
    """Concrete backends usable in this process right now, for logging and capability checks."""
    backends = ["torch"]
    if torch.cuda.is_available() or _interpret_requested():
        module, _ = _load_triton()
        if module is not None and (torch.cuda.is_available() or module.INTERPRETED):
            backends.append("triton")
    return tuple(backends)


def masked_mean_pool(hidden: Tensor, weights: Tensor, backend: str = "auto") -> Tensor:
    """Weighted mean over tokens, float32 (B, H) out: turns token states into one sentence vector."""
    _check_backend_name(backend)
    validate_pool_inputs(hidden, weights)  # hidden (B, T, H), weights (B, T)
    if resolve_backend(backend, hidden) == "triton":
        module, _ = _load_triton()
        assert module is not None  # resolve_backend only returns "triton" after a successful import
        return module.masked_mean_pool_triton(hidden, weights)  # (B, H)
    return masked_mean_pool_ref(hidden, weights)  # (B, H)


def l2_normalize(x: Tensor, backend: str = "auto") -> Tensor:
    """Unit-L2 rows, float32 (B, H) out: makes dot product equal cosine similarity for retrieval."""
    _check_backend_name(backend)
    validate_normalize_input(x)  # (B, H)
    if resolve_backend(backend, x) == "triton":
        module, _ = _load_triton()
        assert module is not None
        return module.l2_normalize_triton(x)  # (B, H)
    return l2_normalize_ref(x)  # (B, H)
