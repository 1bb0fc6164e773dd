"""Triton kernels for masked mean pooling and row-wise L2 normalisation.

Importing this module raises ImportError when triton is not installed; the rest of
``lodestar.kernels`` never imports it eagerly, so the torch backend keeps working.
The kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1`` must be set before this module is first imported, because
``@triton.jit`` picks compiled-vs-interpreted mode at decoration time).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised via a subprocess test
    raise ImportError(
        "lodestar.kernels.triton_pooling needs the 'triton' package; "
        "use backend='torch' (or 'auto') when it is not installed"
    ) from exc

import torch
from torch import Tensor

from .reference import NORM_EPS, POOL_EPS, validate_normalize_input, validate_pool_inputs
from .triton_common import INTERPRETED, SUPPORTED_DTYPES, check_block, next_pow2, unsupported_reason

__all__ = [
    "INTERPRETED",
    "SUPPORTED_DTYPES",
    "masked_mean_pool_triton",
    "l2_normalize_triton",
    "unsupported_reason",
]

# Default tile sizes: 32 tokens x 128 features per loop step keeps loads coalesced
# along H (the contiguous axis of a transformer's hidden states) at ~32 fp32 values
# per thread with 4 warps.
DEFAULT_BLOCK_T: int = 32
DEFAULT_BLOCK_H: int = 128
# Upper bound on the per-row tile of the normalisation kernel.
MAX_NORM_BLOCK: int = 1024


@triton.jit
def _masked_mean_pool_kernel(
    h_ptr,  # (B, T, H) any float dtype, arbitrary strides
    w_ptr,  # (B, T) float/int/uint8 weights, arbitrary strides
    out_ptr,  # (B, H) float32
    T,
    H,
    stride_hb,
    stride_ht,
    stride_hh,
    stride_wb,
    stride_wt,
    stride_ob,
    stride_oh,
    eps,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """One program per (row b, block of H columns): stream T in BLOCK_T steps, accumulate in fp32."""
    pid_b = tl.program_id(0).to(tl.int64)  # int64 so b * stride never overflows on large batches
    pid_h = tl.program_id(1)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    mask_h = offs_h < H
    h_row = h_ptr + pid_b * stride_hb
    w_row = w_ptr + pid_b * stride_wb

    acc = tl.zeros([BLOCK_H], dtype=tl.float32)  # running sum_t w * h for this column block
    wsum = tl.zeros([BLOCK_T], dtype=tl.float32)  # running per-lane sum of weights
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
        mask_t = offs_t < T
        w = tl.load(w_row + offs_t * stride_wt, mask=mask_t, other=0).to(tl.float32)  # (BLOCK_T,)
        # Zero-weight (padding) positions are not loaded at all: saves bandwidth on padded
        # batches and keeps non-finite garbage in padded slots out of the sum.
        live = mask_t & (w != 0)
        h_ptrs = h_row + offs_t[:, None].to(tl.int64) * stride_ht + offs_h[None, :].to(tl.int64) * stride_hh
        h = tl.load(h_ptrs, mask=live[:, None] & mask_h[None, :], other=0.0)
        h = h.to(tl.float32)  # (BLOCK_T, BLOCK_H)
        acc += tl.sum(h * w[:, None], axis=0)
        wsum += w

    denom = tl.maximum(tl.sum(wsum, axis=0), eps)
    out_ptrs = out_ptr + pid_b * stride_ob + offs_h.to(tl.int64) * stride_oh
    tl.store(out_ptrs, acc / denom, mask=mask_h)


@triton.jit
def _l2_normalize_kernel(
    x_ptr,  # (B, H) any float dtype, arbitrary strides
    out_ptr,  # (B, H) float32
    H,
    stride_xb,
    stride_xh,
    stride_ob,
    stride_oh,
    eps,
    BLOCK_H: tl.constexpr,
):
    """One program per row: pass 1 sums squares over H, pass 2 rescales (rereads hit cache)."""
    pid_b = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + pid_b * stride_xb
    out_row = out_ptr + pid_b * stride_ob

    sq = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs = h0 + tl.arange(0, BLOCK_H)
        x = tl.load(x_row + offs * stride_xh, mask=offs < H, other=0.0).to(tl.float32)
        sq += x * x
    norm = tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), eps)

    for h0 in range(0, H, BLOCK_H):
        offs = h0 + tl.arange(0, BLOCK_H)
        mask = offs < H
        x = tl.load(x_row + offs * stride_xh, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_row + offs * stride_oh, x / norm, mask=mask)


def masked_mean_pool_triton(
    hidden: Tensor,
    weights: Tensor,
    eps: float = POOL_EPS,
    *,
    block_t: int | None = None,
    block_h: int | None = None,
) -> Tensor:
    """Triton masked mean pool over T (float32 out); same semantics as masked_mean_pool_ref, no autograd."""
    validate_pool_inputs(hidden, weights)  # hidden (B, T, H), weights (B, T)
    reason = unsupported_reason(hidden)
    if reason is not None:
        raise ValueError(reason)
    if weights.dtype == torch.bool:
        weights = weights.view(torch.uint8)  # zero-copy; the kernel upcasts to float32 anyway

    B, T, H = hidden.shape
    out = torch.empty((B, H), device=hidden.device, dtype=torch.float32)  # (B, H)
    if B == 0 or H == 0:
        return out

    bt = block_t if block_t is not None else min(DEFAULT_BLOCK_T, next_pow2(max(T, 1)))
    bh = block_h if block_h is not None else min(DEFAULT_BLOCK_H, next_pow2(H))
    check_block("block_t", bt)
    check_block("block_h", bh)

    grid = (B, triton.cdiv(H, bh))
    _masked_mean_pool_kernel[grid](
        hidden,
        weights,
        out,
        T,
        H,
        hidden.stride(0),
        hidden.stride(1),
        hidden.stride(2),
        weights.stride(0),
        weights.stride(1),
        out.stride(0),
        out.stride(1),
        eps,
        BLOCK_T=bt,
        BLOCK_H=bh,
        num_warps=4,
    )
    return out


def l2_normalize_triton(x: Tensor, eps: float = NORM_EPS, *, block_h: int | None = None) -> Tensor:
    """Triton row-wise L2 normalisation (float32 out); same semantics as l2_normalize_ref, no autograd."""
    validate_normalize_input(x)  # (B, H)
    reason = unsupported_reason(x)
    if reason is not None:
        raise ValueError(reason)

    B, H = x.shape
    out = torch.empty((B, H), device=x.device, dtype=torch.float32)  # (B, H)
    if B == 0 or H == 0:
        return out

    bh = block_h if block_h is not None else min(MAX_NORM_BLOCK, next_pow2(H))
    check_block("block_h", bh)
    num_warps = 8 if bh >= 1024 else 4

    _l2_normalize_kernel[(B,)](
        x,
        out,
        H,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        out.stride(1),
        eps,
        BLOCK_H=bh,
        num_warps=num_warps,
    )
    return out
