"""Backend dispatch for the embedding hot-path ops: Triton when it can run, PyTorch otherwise.

Triton is imported lazily, on the first call that could actually use it, so importing
``lodestar.kernels`` stays cheap and works on machines without triton. Auto picks Triton for CUDA
tensors (or CPU tensors under TRITON_INTERPRET=1) that need no gradient; the PyTorch path is the
definition, differentiable, and for the sparse head bounded in memory (kernels/sparse.py).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor

from .reference import (
    l2_normalize_ref,
    masked_mean_pool_ref,
    pool_embed_ref,
    validate_normalize_input,
    validate_pool_embed_inputs,
    validate_pool_inputs,
)
from .sparse import Spans, linear_params, sparse_head_module, sparse_head_torch, validate_sparse_inputs

__all__ = [
    "BACKENDS",
    "Backend",
    "available_backends",
    "resolve_backend",
    "masked_mean_pool",
    "l2_normalize",
    "pool_embed",
    "sparse_head",
]

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")

# Values triton itself treats as "on" for TRITON_INTERPRET.
_TRUTHY = frozenset({"1", "true", "on", "yes"})


def _interpret_requested() -> bool:
    """Whether TRITON_INTERPRET asks for the Triton interpreter (lets kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


@functools.cache
def _load_module(name: str) -> tuple[ModuleType | None, str]:
    """Import one triton kernel module of this package once; return (module, "") or (None, why not)."""
    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ImportError as exc:
        return None, str(exc)
    return module, ""


def _load_triton() -> tuple[ModuleType | None, str]:
    """The pooling kernels' module: importing it is the test that triton works here at all."""
    return _load_module("triton_pooling")


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


def _triton_module(backend: str, tensor: Tensor, name: str, check: Callable[[ModuleType], str | None]) -> Any:
    """The triton module `name` when `backend` resolves to triton for these inputs, else None
    (`check` adds the module's own conditions; forced 'triton' raises ValueError with the reason)."""
    _check_backend_name(backend)
    if backend == "torch":
        return None
    blocker = _triton_blocker(tensor)
    module = None
    if blocker is None:
        module, error = _load_module(name)
        blocker = f"triton is not available ({error})" if module is None else check(module)
    if blocker is not None:
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot be used: {blocker}")
        return None
    return module


def pool_embed(
    hidden: Tensor,
    *,
    weights: Tensor | None = None,
    last: Tensor | None = None,
    dimensions: int | None = None,
    normalize: bool = True,
    dtype: str = "float32",
    backend: str = "auto",
) -> Tensor:
    """Embedding rows ready for the wire in one pass: mean pooling over `weights` (B, T) or the `last`
    (B,) position, the first `dimensions` features, L2 norm, float32 / int8 (B, D) or binary (B, D/8)."""
    validate_pool_embed_inputs(hidden, weights, last, dimensions, dtype)
    module = _triton_module(backend, hidden, "triton_embed", lambda m: None)
    if module is not None:
        return module.pool_embed_triton(hidden, weights, last, dimensions, normalize, dtype)
    return pool_embed_ref(hidden, weights, last, dimensions, normalize, dtype)


def sparse_head(
    hidden: Tensor, spans: Spans, head: torch.nn.Module | Tensor, shift: float, backend: str = "auto"
) -> Tensor:
    """(B, V) float32 learned-sparse weights of each row's pooled span under the LM head (a module, or
    its (V, H) weight): the fused Triton head, else the PyTorch path (bounded in memory without grad)."""
    _check_backend_name(backend)
    if isinstance(head, Tensor):
        weight, bias = head, None
    else:
        params = linear_params(head)
        if params is None:  # e.g. a LoRA-wrapped head: only its own forward gives its logits
            if backend == "triton":
                raise ValueError(f"backend='triton' needs a plain nn.Linear head, got {type(head).__name__}")
            return sparse_head_module(hidden, spans, head, shift)
        weight, bias = params
    validate_sparse_inputs(hidden, spans, weight, bias)
    module = _triton_module(
        backend, hidden, "triton_sparse", lambda m: m.sparse_unsupported_reason(hidden, weight, bias)
    )
    if module is not None:
        return module.sparse_head_triton(hidden, spans, weight, bias, shift)
    return sparse_head_torch(hidden, spans, weight, bias, shift)
