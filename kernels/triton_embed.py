"""Triton kernel: pooling, Matryoshka truncation, L2 normalisation and int8 / packed-binary output in
one pass (definition: lodestar.kernels.reference.pool_embed_ref).

Why it exists: done as separate ops, a batch's hidden states are read to pool, the pooled rows are
written, read back to cut and normalise, written, read again to scale or take signs and written in
their final dtype, each step a kernel launch (and on the engine's path a copy to the host in
float32 before any of it). Here one program owns one row: it reads only the first D features of the
positions it pools, and everything after the pooling happens in registers, so the only write is the
output itself: D floats, D bytes (int8) or D / 8 bytes (binary), the last two a quarter and a
thirty-second of the float32 rows a host would otherwise receive.

The row is held as a (D / 8, 8) tile, so that packing eight signs into a byte is a sum along the
second axis (no reshape). Division and square root round to nearest (div_rn, sqrt_rn) and int8 uses
ties-to-even, so that from the same floats the bytes are embed/output.py's `pack`, bit for bit.

Importing this module raises ImportError when triton is not installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import NORM_EPS, POOL_EPS, QUANT_EPS, validate_pool_embed_inputs
from .triton_common import check_block, next_pow2, unsupported_reason

__all__ = ["OUT_CODES", "pool_embed_triton"]

OUT_CODES: dict[str, int] = {"float32": 0, "int8": 1, "binary": 2}
DEFAULT_BLOCK_T: int = 4  # positions per step: (4, D/8, 8) elements in flight, 16k for D = 4096
MAX_DIM: int = 16384  # one row is one program's registers; past this the tile would spill


@triton.jit
def _rint(x):
    """Round to the nearest integer, ties to even (np.rint), exactly: floor and its remainder are exact."""
    r = tl.floor(x)
    frac = x - r
    half = r * 0.5
    odd = half != tl.floor(half)
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return r + tl.where(up, 1.0, 0.0)


@triton.jit
def _pool_embed_kernel(
    h_ptr,  # (B, T, H) any float dtype, arbitrary strides
    w_ptr,  # MODE 0: (B, T) pooling weights; MODE 1: (B,) the position each row keeps
    out_ptr,  # (B, D) float32 | (B, D) int8 | (B, ceil(D / 8)) uint8
    f_ptr,  # (B, D) float32 copy of the final floats (only with ALSO_FLOAT: tests check the packing)
    T,
    D,
    stride_hb,
    stride_ht,
    stride_hh,
    stride_wb,
    stride_wt,
    stride_ob,
    pool_eps,
    norm_eps,
    quant_eps,
    MODE: tl.constexpr,
    NORMALIZE: tl.constexpr,
    OUT: tl.constexpr,
    ALSO_FLOAT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    NB: tl.constexpr,
):
    """One program per row: pool over T into a (NB, 8) float32 tile, normalise, quantise, store."""
    b = tl.program_id(0).to(tl.int64)
    byte = tl.arange(0, NB)[:, None]  # (NB, 1)
    bit = tl.arange(0, 8)[None, :]  # (1, 8)
    d = byte * 8 + bit  # (NB, 8) feature index
    mask_d = d < D
    h_row = h_ptr + b * stride_hb + d.to(tl.int64) * stride_hh  # (NB, 8) pointers at t = 0

    if MODE == 0:  # weighted mean; zero-weight positions are never loaded (padding may hold NaN)
        acc = tl.zeros([NB, 8], dtype=tl.float32)
        wsum = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
            mask_t = offs_t < T
            w = tl.load(w_ptr + b * stride_wb + offs_t * stride_wt, mask=mask_t, other=0).to(tl.float32)
            live = mask_t & (w != 0)
            h = tl.load(
                h_row[None, :, :] + offs_t[:, None, None].to(tl.int64) * stride_ht,
                mask=live[:, None, None] & mask_d[None, :, :],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_T, NB, 8)
            acc += tl.sum(h * w[:, None, None], axis=0)
            wsum += w
        denom = tl.maximum(tl.sum(wsum, axis=0), pool_eps)
        v = tl.div_rn(acc, tl.zeros([NB, 8], dtype=tl.float32) + denom)
    else:  # the one position each row keeps (last token, or the token a prompt asks for)
        t = tl.load(w_ptr + b * stride_wb).to(tl.int64)
        v = tl.load(h_row + t * stride_ht, mask=mask_d, other=0.0).to(tl.float32)

    if NORMALIZE:
        norm = tl.maximum(tl.sqrt_rn(tl.sum(tl.sum(v * v, axis=1), axis=0)), norm_eps)
        v = tl.div_rn(v, tl.zeros([NB, 8], dtype=tl.float32) + norm)
    if ALSO_FLOAT:
        tl.store(f_ptr + b * D + d, v, mask=mask_d)

    if OUT == 0:
        tl.store(out_ptr + b * stride_ob + d, v, mask=mask_d)
    elif OUT == 1:  # int8: symmetric per-row scale to +-127, as embed/output.py packs it
        top = tl.max(tl.max(tl.where(mask_d, tl.abs(v), 0.0), axis=1), axis=0)
        scale = tl.maximum(top, quant_eps)
        q = tl.div_rn(v, tl.zeros([NB, 8], dtype=tl.float32) + scale) * 127.0
        q = tl.minimum(tl.maximum(_rint(q), -127.0), 127.0)
        tl.store(out_ptr + b * stride_ob + d, q.to(tl.int8), mask=mask_d)
    else:  # binary: sign bits, most significant first, zero bits past D (np.packbits)
        bits = tl.where(mask_d & (v > 0), 1, 0).to(tl.int32)  # (NB, 8)
        packed = tl.sum(bits << (7 - bit), axis=1)  # (NB,)
        offs_byte = tl.arange(0, NB)
        tl.store(out_ptr + b * stride_ob + offs_byte, packed.to(tl.uint8), mask=offs_byte * 8 < D)


def pool_embed_triton(
    hidden: Tensor,
    weights: Tensor | None = None,
    last: Tensor | None = None,
    dimensions: int | None = None,
    normalize: bool = True,
    dtype: str = "float32",
    *,
    block_t: int = DEFAULT_BLOCK_T,
    also_float: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """pool_embed_ref in one kernel (no autograd); also_float=True returns (output, the float32 rows
    it was made from), so a test can pack those floats and compare bytes."""
    validate_pool_embed_inputs(hidden, weights, last, dimensions, dtype)
    reason = unsupported_reason(hidden)
    if reason is not None:
        raise ValueError(reason)
    check_block("block_t", block_t)
    B, T, H = hidden.shape
    D = dimensions or H
    if D > MAX_DIM:
        raise ValueError(f"the one-pass kernel holds a row in registers: dimensions <= {MAX_DIM}, got {D}")
    device = hidden.device
    if dtype == "binary":
        out = torch.empty((B, -(-D // 8)), device=device, dtype=torch.uint8)
    else:
        out = torch.empty((B, D), device=device, dtype=torch.int8 if dtype == "int8" else torch.float32)
    floats = torch.empty((B, D) if also_float else (1, 1), device=device, dtype=torch.float32)
    if B == 0:
        return (out, floats) if also_float else out
    if weights is not None:
        w = weights.view(torch.uint8) if weights.dtype == torch.bool else weights  # zero-copy; upcast in-kernel
        stride_wb, stride_wt, mode = w.stride(0), w.stride(1), 0
    else:
        assert last is not None
        w = last.to(device=device, dtype=torch.int64)
        stride_wb, stride_wt, mode = w.stride(0), 0, 1
    nb = max(1, next_pow2(-(-D // 8)))
    _pool_embed_kernel[(B,)](
        hidden,
        w,
        out,
        floats,
        T,
        D,
        hidden.stride(0),
        hidden.stride(1),
        hidden.stride(2),
        stride_wb,
        stride_wt,
        out.stride(0),
        POOL_EPS,
        NORM_EPS,
        QUANT_EPS,
        MODE=mode,
        NORMALIZE=normalize,
        OUT=OUT_CODES[dtype],
        ALSO_FLOAT=also_float,
        BLOCK_T=block_t,
        NB=nb,
        num_warps=8 if nb * 8 >= 2048 else 4,
    )
    return (out, floats) if also_float else out
