"""Triton kernels for the fused learned-sparse head (definition: lodestar.kernels.sparse).

Why they exist: the plain head materialises each text's (n, V) LM-head logits, then as many
temporaries again to standardise and pool them. With a large vocabulary that is where a GPU's memory
and time go (512 positions x Llama 3's 128k entries: 250 MiB of float32 logits per text, written and
read back several times). Here the logits live only in registers, one (positions x vocabulary) tile
at a time, and never reach global memory; what is written is 3 floats per position and split (the
statistics), and one float per text and vocabulary entry (the weights).

Two passes over the vocabulary, by design: a position's z-score needs the mean and deviation over
the whole vocabulary before any weight can be formed, and keeping every logit until then is exactly
what this avoids. So the matmul runs twice (statistics, then weights); the weights pass is where
the max over positions happens, one program per (text, vocabulary tile), in registers.

Importing this module raises ImportError when triton is not installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .sparse import STD_EPS, Spans, validate_sparse_inputs
from .triton_common import INTERPRETED, check_block, next_pow2, unsupported_reason

__all__ = ["sparse_head_triton", "sparse_unsupported_reason"]

DEFAULT_BLOCK_V: int = (
    128  # vocabulary entries per tile: a 64 x 128 fp32 accumulator is 32 registers a thread at 8 warps
)
DEFAULT_BLOCK_K: int = 64  # hidden features per matmul step
# How the accumulator is rounded to the head's dtype (its matmul's output dtype) in _logits_tile.
_ROUNDING: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
PROGRAMS_PER_SM: int = 2  # the statistics pass splits the vocabulary until about this many programs per SM run


@triton.jit
def _round_to_bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), kept in float32. Done on the bits because the
    interpreter truncates on .to(tl.bfloat16) (triton 3.9), where a GPU rounds to nearest even."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _logits_tile(
    x_ptr,
    w_ptr,
    b_ptr,
    offs_m,
    mask_m,
    offs_v,
    mask_v,
    H,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """(BLOCK_M, BLOCK_V) float32 logits of rows offs_m against vocabulary entries offs_v, in registers.

    IEEE multiplies in float32: for float32 heads, and for 16-bit ones under the interpreter, whose
    bfloat16 tl.dot returns garbage (triton 3.9); 16-bit products are exact in float32, so the
    result is what the GPU's 16-bit MMA with a float32 accumulator gives.
    ROUND (1: bfloat16, 2: float16) rounds the float32 accumulator to the inputs' 16-bit dtype and
    back, as the head's own matmul returns its logits (the definition standardises those values)."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        mask_k = offs_k < H
        x = tl.load(
            x_ptr + offs_m[:, None].to(tl.int64) * stride_xn + offs_k[None, :] * stride_xh,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_K)
        w = tl.load(
            w_ptr + offs_v[None, :].to(tl.int64) * stride_wv + offs_k[:, None] * stride_wh,
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_V): the head's rows, read transposed
        if IEEE:  # fp32 heads (no TF32 shortcut), and bf16 under the interpreter, whose bf16 dot is wrong
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_v, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    if ROUND == 1:
        acc = _round_to_bf16(acc)
    elif ROUND == 2:
        acc = acc.to(tl.float16).to(tl.float32)
    return acc


@triton.jit
def _sparse_stats_kernel(
    x_ptr,  # (N, H) every text's pooled rows, one after another
    w_ptr,  # (V, H) the head's weight
    b_ptr,  # (V,) its bias (unused without HAS_BIAS)
    mean_ptr,  # (S, N) float32: per split, each row's mean over the split's columns
    m2_ptr,  # (S, N) float32: ... and sum of squared deviations
    N,
    V,
    H,
    tiles_per_split,
    n_tiles,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Statistics pass: program (row block, split) walks its contiguous run of vocabulary tiles and
    merges each tile's per-row mean and squared deviations into running ones (Chan's update)."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    mask_m = offs_m < N
    count = tl.zeros([BLOCK_M], dtype=tl.float32)
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)
    for t in range(t_begin, t_end):
        offs_v = t * BLOCK_V + tl.arange(0, BLOCK_V)  # (BLOCK_V,)
        mask_v = offs_v < V
        logits = _logits_tile(
            x_ptr, w_ptr, b_ptr, offs_m, mask_m, offs_v, mask_v, H, stride_xn, stride_xh, stride_wv, stride_wh,
            HAS_BIAS, ROUND, IEEE, BLOCK_M, BLOCK_V, BLOCK_K,
        )  # fmt: skip
        width = tl.sum(mask_v.to(tl.float32), axis=0)
        keep = mask_v[None, :]
        tile_mean = tl.sum(tl.where(keep, logits, 0.0), axis=1) / width  # (BLOCK_M,)
        dev = tl.where(keep, logits - tile_mean[:, None], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=1)
        total = count + width
        delta = tile_mean - mean
        mean += delta * (width / total)
        m2 += tile_m2 + delta * delta * (count * width / total)
        count = total
    out = pid_s.to(tl.int64) * N + offs_m
    tl.store(mean_ptr + out, mean, mask=mask_m)
    tl.store(m2_ptr + out, m2, mask=mask_m)


@triton.jit
def _sparse_weights_kernel(
    x_ptr,  # (N, H) pooled rows
    w_ptr,  # (V, H)
    b_ptr,  # (V,)
    mean_ptr,  # (N,) float32 per-row mean over the vocabulary
    std_ptr,  # (N,) float32 per-row standard deviation (already floored)
    seg_ptr,  # (B + 1,) int32: text b owns rows seg[b] .. seg[b + 1]
    out_ptr,  # (B, V) float32 weights
    V,
    H,
    shift,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    stride_ob,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Weights pass: program (text, vocabulary tile) streams the text's rows, keeps the running max of
    z over them, and applies log(1 + relu(z - shift)) once per entry at the end. Texts vary fastest
    in the launch order, so the programs reading one tile of the head run together and share it in L2."""
    pid_b = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < V
    start = tl.load(seg_ptr + pid_b)
    end = tl.load(seg_ptr + pid_b + 1)
    zmax = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        logits = _logits_tile(
            x_ptr, w_ptr, b_ptr, offs_m, mask_m, offs_v, mask_v, H, stride_xn, stride_xh, stride_wv, stride_wh,
            HAS_BIAS, ROUND, IEEE, BLOCK_M, BLOCK_V, BLOCK_K,
        )  # fmt: skip
        mean = tl.load(mean_ptr + offs_m, mask=mask_m, other=0.0)
        std = tl.load(std_ptr + offs_m, mask=mask_m, other=1.0)
        z = (logits - mean[:, None]) / std[:, None]  # (BLOCK_M, BLOCK_V)
        z = tl.where(mask_m[:, None], z, float("-inf"))
        zmax = tl.maximum(zmax, tl.max(z, axis=0))
    y = tl.maximum(zmax - shift, 0.0)  # relu; a text with no rows keeps -inf and gets 0
    u = 1.0 + y
    # log1p(y) without losing y's low bits when y is tiny: log(u) * y / (u - 1) (Goldberg's trick)
    weight = tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))
    tl.store(out_ptr + pid_b.to(tl.int64) * stride_ob + offs_v, weight, mask=mask_v)


def sparse_unsupported_reason(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> str | None:
    """Why the fused head cannot take these inputs (device, dtype, gradients, mixed dtypes), or None."""
    reason = unsupported_reason(hidden, weight, *(() if bias is None else (bias,)))
    if reason is None and hidden.dtype != weight.dtype:
        reason = f"hidden is {hidden.dtype} but the head's weight is {weight.dtype}; the fused head takes one dtype"
    return reason


def _programs_wanted(device: torch.device) -> int:
    """About how many programs keep the device busy (a guess on the interpreter, where it is moot)."""
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def sparse_head_triton(
    hidden: Tensor,
    spans: Spans,
    weight: Tensor,
    bias: Tensor | None,
    shift: float,
    *,
    block_m: int | None = None,
    block_v: int = DEFAULT_BLOCK_V,
    block_k: int | None = None,
    splits: int | None = None,
) -> Tensor:
    """(B, V) float32 learned-sparse weights, the fused way; sparse_head_ref's semantics, no autograd."""
    validate_sparse_inputs(hidden, spans, weight, bias)  # hidden (B, T, H), weight (V, H)
    reason = sparse_unsupported_reason(hidden, weight, bias)
    if reason is not None:
        raise ValueError(reason)
    B, _, H = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    out = torch.zeros((B, V), device=device, dtype=torch.float32)  # (B, V)
    lengths = [e - s for s, e in spans]
    N = sum(lengths)
    if N == 0 or V == 0:
        return out
    rows = torch.cat([hidden[b, s:e] for b, (s, e) in enumerate(spans) if e > s])  # (N, H): pooled rows only
    seg = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)  # (B + 1,)

    bm = block_m if block_m is not None else min(64, max(16, next_pow2(max(lengths))))
    bk = block_k if block_k is not None else min(DEFAULT_BLOCK_K, max(16, next_pow2(H)))
    check_block("block_m", bm, 16)  # tl.dot needs 16 or more along each side
    check_block("block_v", block_v, 16)
    check_block("block_k", bk, 16)
    n_rows = triton.cdiv(N, bm)
    n_tiles = triton.cdiv(V, block_v)
    wanted = splits if splits is not None else triton.cdiv(_programs_wanted(device), n_rows)
    per_split = triton.cdiv(n_tiles, max(1, min(wanted, n_tiles)))
    n_splits = triton.cdiv(n_tiles, per_split)
    flags = {
        "HAS_BIAS": bias is not None,
        "ROUND": _ROUNDING[weight.dtype],
        "IEEE": weight.dtype == torch.float32 or INTERPRETED,
        "BLOCK_M": bm,
        "BLOCK_V": block_v,
        "BLOCK_K": bk,
        "num_warps": 8 if bm >= 64 else 4,
    }
    b_arg = bias if bias is not None else weight  # any pointer: never read without HAS_BIAS
    strides = (rows.stride(0), rows.stride(1), weight.stride(0), weight.stride(1))

    means = torch.empty((n_splits, N), device=device, dtype=torch.float32)  # (S, N)
    m2s = torch.empty_like(means)
    _sparse_stats_kernel[(n_rows, n_splits)](
        rows, weight, b_arg, means, m2s, N, V, H, per_split, n_tiles, *strides, **flags
    )
    widths = torch.tensor(
        [min(V, (s + 1) * per_split * block_v) - s * per_split * block_v for s in range(n_splits)],
        device=device,
        dtype=torch.float64,
    )[:, None]  # (S, 1) vocabulary entries each split covered
    m64 = means.double()
    mean = (m64 * widths).sum(0) / V  # (N,)
    m2 = m2s.double().sum(0) + (widths * (m64 - mean) ** 2).sum(0)
    std = (m2 / max(V - 1, 1)).sqrt().float().clamp_min(STD_EPS)  # (N,)

    _sparse_weights_kernel[(B, n_tiles)](
        rows, weight, b_arg, mean.float(), std, seg, out, V, H, shift, *strides, out.stride(0), **flags
    )
    return out
