"""Plain-PyTorch reference implementations of the embedding hot-path ops (pooling, normalisation,
quantisation; the sparse head's are in sparse.py).

These define the semantics the Triton kernels must reproduce, and serve as the
fallback backend on CPU (and anywhere Triton is unavailable). Pooling and normalisation always
accumulate and return float32, whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "OUT_DTYPES",
    "POOL_EPS",
    "NORM_EPS",
    "QUANT_EPS",
    "pool_embed_ref",
    "quantize_ref",
    "validate_pool_embed_inputs",
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


# Output dtypes of pool_embed: what embed/output.py packs for the wire (float16 stays there: it
# fails a request whose values overflow, a decision the engine makes, not a kernel).
OUT_DTYPES: tuple[str, ...] = ("float32", "int8", "binary")
QUANT_EPS: float = 1e-12  # floor on a row's largest magnitude when scaling to int8 (embed/output.py's)


def validate_pool_embed_inputs(
    hidden: Tensor, weights: Tensor | None, last: Tensor | None, dimensions: int | None, dtype: str
) -> None:
    """Check pool_embed's arguments; raise ValueError naming what is wrong and what is allowed."""
    if (weights is None) == (last is None):
        raise ValueError("give exactly one of weights (B, T) for mean pooling or last (B,) for last-token pooling")
    if weights is not None:
        validate_pool_inputs(hidden, weights)
    else:
        assert last is not None
        if hidden.dim() != 3 or not hidden.is_floating_point():
            raise ValueError(f"hidden must be a floating (B, T, H) tensor, got {hidden.dtype} {tuple(hidden.shape)}")
        if last.dim() != 1 or last.shape[0] != hidden.shape[0] or last.is_floating_point():
            raise ValueError(
                f"last must be (B,) integer positions, B = {hidden.shape[0]}; got {last.dtype} {tuple(last.shape)}"
            )
        if last.numel() and (int(last.min()) < 0 or int(last.max()) >= hidden.shape[1]):
            raise ValueError(f"last positions must lie in [0, T = {hidden.shape[1]})")
    if dimensions is not None and not 1 <= dimensions <= hidden.shape[2]:
        raise ValueError(f"dimensions must be in 1..{hidden.shape[2]} (or None for all); got {dimensions}")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"unknown output dtype {dtype!r}; valid are {', '.join(OUT_DTYPES)}")


def quantize_ref(v: Tensor, dtype: str) -> Tensor:
    """float32 (B, D) -> float32 (B, D), int8 (B, D) (per-row symmetric scale, ties to even) or packed
    sign bits uint8 (B, ceil(D / 8)), most significant bit first: embed/output.py's `pack`, in torch."""
    if dtype == "float32":
        return v
    if dtype == "int8":
        scale = v.abs().amax(dim=1, keepdim=True).clamp_min(QUANT_EPS)  # (B, 1)
        return torch.round(v / scale * 127.0).clamp(-127, 127).to(torch.int8)  # torch.round: ties to even, as np.rint
    if dtype == "binary":
        B, D = v.shape
        bits = torch.zeros(B, -(-D // 8) * 8, dtype=torch.uint8, device=v.device)  # (B, 8 * ceil(D / 8)), zero pad
        bits[:, :D] = v > 0
        place = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=v.device)
        return (bits.view(B, -1, 8) * place).sum(-1, dtype=torch.uint8)  # (B, ceil(D / 8))
    raise ValueError(f"unknown output dtype {dtype!r}; valid are {', '.join(OUT_DTYPES)}")


def pool_embed_ref(
    hidden: Tensor,
    weights: Tensor | None = None,
    last: Tensor | None = None,
    dimensions: int | None = None,
    normalize: bool = True,
    dtype: str = "float32",
) -> Tensor:
    """Pool (weighted mean, or the `last` position of each row), keep the first `dimensions` features
    (Matryoshka), L2-normalise, quantise: the definition the one-pass kernel reproduces."""
    validate_pool_embed_inputs(hidden, weights, last, dimensions, dtype)
    D = dimensions or hidden.shape[2]
    if weights is not None:
        pooled = masked_mean_pool_ref(hidden[:, :, :D], weights)  # (B, D): features are pooled independently
    else:
        assert last is not None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last.to(hidden.device), :D].to(torch.float32)  # (B, D)
    if normalize:
        pooled = l2_normalize_ref(pooled)
    return quantize_ref(pooled.contiguous(), dtype)
