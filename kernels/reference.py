"""Plain-PyTorch reference implementations of the embedding hot-path ops.

These define the semantics the Triton kernels must reproduce, and serve as the
fallback backend on CPU (and anywhere Triton is unavailable). Both ops always
accumulate and return float32, whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "POOL_EPS",
    "NORM_EPS",
    "masked_mean_pool_ref",
    "l2_normalize_ref",
    "validate_pool_inputs",
    "validate_normalize_input",
]

# Lower bound on the summed weights of a row, so an all-zero (fully padded) row
# pools to zeros instead of NaN.
POOL_EPS: float = 1e-9
# Lower bound on a row's L2 norm (same default as torch.nn.functional.normalize).
NORM_EPS: float = 1e-12


def validate_pool_inputs(hidden: Tensor, weights: Tensor) -> None:
    """Check shapes/dtypes/devices for masked mean pooling; raise ValueError early with a clear message."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape (B, T, H), got {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got {hidden.dtype}")
    if weights.dim() != 2 or tuple(weights.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"weights must have shape (B, T) = {tuple(hidden.shape[:2])}, got {tuple(weights.shape)}")
    if weights.is_complex():
        raise ValueError(f"weights must be real (float, int or bool), got {weights.dtype}")
    if weights.device != hidden.device:
        raise ValueError(f"hidden is on {hidden.device} but weights is on {weights.device}")


def validate_normalize_input(x: Tensor) -> None:
    """Check that x is a floating (B, H) matrix; raise ValueError early with a clear message."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, H), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")


def masked_mean_pool_ref(hidden: Tensor, weights: Tensor, eps: float = POOL_EPS) -> Tensor:
    """Weighted mean of hidden over T in float32: the semantic definition the Triton kernel matches.

    out[b] = sum_t w[b, t] * hidden[b, t] / max(sum_t w[b, t], eps). Positions whose
    weight is exactly zero (padding) contribute nothing even if their hidden state is
    non-finite, so garbage in padded slots never leaks into the embedding.
    """
    validate_pool_inputs(hidden, weights)
    w = weights.to(torch.float32)  # (B, T)
    h = hidden.to(torch.float32)  # (B, T, H); no copy when already float32
    keep = (w != 0).unsqueeze(-1)  # (B, T, 1)
    # torch.where allocates a fresh tensor, so the in-place multiply never touches the caller's data.
    weighted = torch.where(keep, h, 0.0).mul_(w.unsqueeze(-1))  # (B, T, H)
    total = weighted.sum(dim=1)  # (B, H)
    denom = w.sum(dim=1, keepdim=True).clamp_min(eps)  # (B, 1)
    return total / denom  # (B, H) float32


def l2_normalize_ref(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Scale each row of x to unit L2 norm in float32, so dot products become cosine similarities."""
    validate_normalize_input(x)
    x32 = x.to(torch.float32)  # (B, H)
    norm = torch.linalg.vector_norm(x32, ord=2, dim=1, keepdim=True).clamp_min(eps)  # (B, 1)
    return x32 / norm  # (B, H) float32
