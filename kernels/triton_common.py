"""What every Triton kernel module here shares: whether the interpreter is on, which inputs the
kernels take, and block-size helpers.

Importing this module raises ImportError when triton is not installed (the dispatcher catches it).
"""

from __future__ import annotations

try:
    import triton
except ImportError as exc:  # pragma: no cover - exercised via a subprocess test
    raise ImportError(
        "lodestar.kernels' triton modules need the 'triton' package; use backend='torch' (or 'auto') when it is not installed"
    ) from exc

import torch
from torch import Tensor

__all__ = ["INTERPRETED", "SUPPORTED_DTYPES", "check_block", "next_pow2", "unsupported_reason"]

# Input dtypes the kernels load natively (they upcast to float32 in registers).
SUPPORTED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.float16, torch.bfloat16})


@triton.jit
def _probe() -> None:
    """Never launched: its type says whether @triton.jit built interpreted functions."""
    pass


# True when kernels are built by the Triton interpreter (TRITON_INTERPRET=1 when triton first
# decorated them), which lets them run on CPU tensors.
INTERPRETED: bool = type(_probe).__name__ == "InterpretedFunction"


def unsupported_reason(*tensors: Tensor) -> str | None:
    """Say why these kernels cannot run on the given inputs, or None if they can (used by auto-dispatch)."""
    for t in tensors:
        if t.device.type != "cuda" and not INTERPRETED:
            return (
                f"tensor is on {t.device}: the triton kernels need CUDA tensors, or TRITON_INTERPRET=1 "
                "set before lodestar.kernels' triton modules are first imported to run on CPU"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(sorted(str(d) for d in SUPPORTED_DTYPES))
            return f"dtype {t.dtype} is not supported by the triton kernels (supported: {names})"
        if t.requires_grad and torch.is_grad_enabled():
            return "the triton kernels have no backward pass; use backend='torch' when gradients are needed"
    return None


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (at least 1); Triton block shapes must be powers of two."""
    return 1 << max(0, (n - 1).bit_length())


def check_block(name: str, value: int, minimum: int = 1) -> None:
    """Reject block sizes Triton cannot compile (a power of two, at least `minimum`)."""
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value}")
