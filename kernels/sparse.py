"""The learned-sparse (SPLADE) head in PyTorch: its definition, and a path whose memory stays bounded.

For each text, the LM head's logits at the text's pooled positions are standardised per position
over the vocabulary, shifted, and turned into weights log(1 + relu(z - shift)), max-pooled over the
positions: one weight per vocabulary entry. Done plainly that is (n, V) float logits per text plus
as many temporaries (a 512-token text under Llama 3's 128k vocabulary: 250 MiB of logits alone).

The arithmetic runs on a fixed grid of vocabulary tiles (`tile` entries): one matmul per tile, each
tile's per-position mean and squared deviations (one Welford pass) merged in float64 in tile order,
element-wise work per tile. That fixed order is part of the definition. It is what lets the streamed path, which holds one tile of logits at a time
and computes each tile twice (statistics, then weights), give the materialised result bit for bit:
on CPU BLAS one (n, V) matmul and per-slice matmuls differ in the last bit of some tail columns,
and regrouped float sums differ in the last bit too, so "the same maths" would not be enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "STD_EPS",
    "STREAM_ABOVE_BYTES",
    "TILE",
    "linear_params",
    "sparse_head_module",
    "sparse_head_ref",
    "sparse_head_streamed",
    "sparse_head_torch",
    "sparse_weights_ref",
    "validate_sparse_inputs",
]

TILE: int = 4096  # vocabulary entries per tile: the unit every sum and matmul of the definition runs on
STD_EPS: float = 1e-6  # floor on a position's standard deviation (a constant row standardises to 0)
# A text whose float32 logits would take more than this is streamed tile by tile (two matmul passes)
# instead of materialised (one pass): short texts keep the cheaper single pass, long ones stay bounded.
STREAM_ABOVE_BYTES: int = 32 * 2**20

Spans = Sequence[tuple[int, int]]


def validate_sparse_inputs(hidden: Tensor, spans: Spans, weight: Tensor, bias: Tensor | None) -> None:
    """Check shapes and spans before any work; raise ValueError naming what is wrong."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape (B, T, H), got {tuple(hidden.shape)}")
    B, T, H = hidden.shape
    if len(spans) != B:
        raise ValueError(f"spans must give one (start, end) per row: {B} rows, {len(spans)} spans")
    for b, (s, e) in enumerate(spans):
        if not 0 <= s <= e <= T:
            raise ValueError(f"span {b} is ({s}, {e}); it must satisfy 0 <= start <= end <= T = {T}")
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight must have shape (V, H = {H}), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")


def linear_params(head: torch.nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """(weight (V, H), bias) of a plain nn.Linear head; None for anything else (a LoRA wrapper, a
    quantised layer), whose output only its own forward knows."""
    if type(head) is not torch.nn.Linear:
        return None
    return head.weight, head.bias


def _grid(V: int, tile: int) -> list[tuple[int, int]]:
    """The tile grid over the vocabulary: [0, tile), [tile, 2 tile), ..., the last one shorter."""
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    return [(lo, min(lo + tile, V)) for lo in range(0, V, tile)]


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """One tile's per-position mean and sum of squared deviations (n,) each, in one Welford pass."""
    var, mean = torch.var_mean(x, dim=-1, correction=0)  # (n,) float32 each
    return mean, var * x.shape[-1]


def _standardiser(means: Tensor, m2s: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position mean and unbiased std, float32 (n, 1), from per-tile means and squared deviations
    (n, n_tiles) merged in float64 in tile order (Chan et al.'s pairwise update, all tiles at once)."""
    w = widths.to(torch.float64)  # (n_tiles,)
    V = float(w.sum())
    m64 = means.double()  # (n, n_tiles)
    mean = (m64 * w).sum(-1, keepdim=True) / V  # (n, 1)
    m2 = m2s.double().sum(-1, keepdim=True) + (w * (m64 - mean) ** 2).sum(-1, keepdim=True)  # (n, 1)
    std = (m2 / max(V - 1.0, 1.0)).sqrt()
    return mean.float(), std.float().clamp_min(STD_EPS)


def _tile_weights(x: Tensor, mean: Tensor, std: Tensor, shift: float) -> Tensor:
    """One tile's weights, max-pooled over positions: (n, tile) logits -> (tile,) float32. The max is
    taken over z before log(1 + relu(z - shift)), which is non-decreasing in z, so the logarithm runs
    once per vocabulary entry instead of once per position and entry."""
    zmax = ((x - mean) / std).amax(dim=0)  # (tile,)
    return torch.log1p(torch.relu(zmax - shift))


def _weights_from_tiles(parts: list[Tensor], V: int, shift: float) -> Tensor:
    """(V,) weights from every tile's logits held at once (the materialised computation)."""
    means, m2s = zip(*(_moments(x) for x in parts))
    widths = torch.tensor([x.shape[1] for x in parts], device=parts[0].device)  # (n_tiles,)
    mean, std = _standardiser(torch.stack(means, -1), torch.stack(m2s, -1), widths)  # (n, 1) each
    return torch.cat([_tile_weights(x, mean, std, shift) for x in parts])


def sparse_weights_ref(logits: Tensor, shift: float, tile: int = TILE) -> Tensor:
    """(n, V) logits of one text's pooled positions -> (V,) float32 weights, by the definition above."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (n, V), got {tuple(logits.shape)}")
    n, V = logits.shape
    if n == 0:
        return logits.new_zeros(V, dtype=torch.float32)
    x = logits.float()
    return _weights_from_tiles([x[:, lo:hi].contiguous() for lo, hi in _grid(V, tile)], V, shift)


def _tile_logits(rows: Tensor, weight: Tensor, bias: Tensor | None, lo: int, hi: int) -> Tensor:
    """Logits of one tile, in the head's dtype then float32, as the head itself would give them: (n, hi - lo)."""
    return F.linear(rows, weight[lo:hi], None if bias is None else bias[lo:hi]).float()


def _per_text(hidden: Tensor, spans: Spans, V: int, one: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply `one` to each text's pooled rows (n, H) -> (V,); empty spans give zeros. Returns (B, V)."""
    out = []
    for b, (s, e) in enumerate(spans):
        out.append(one(hidden[b, s:e]) if e > s else hidden.new_zeros(V, dtype=torch.float32))
    if not out:
        return hidden.new_zeros((0, V), dtype=torch.float32)
    return torch.stack(out)  # (B, V)


def sparse_head_ref(
    hidden: Tensor, spans: Spans, weight: Tensor, bias: Tensor | None, shift: float, tile: int = TILE
) -> Tensor:
    """The definition: (B, V) float32 weights, each text's (n, V) logits materialised (differentiable)."""
    validate_sparse_inputs(hidden, spans, weight, bias)
    V = weight.shape[0]
    grid = _grid(V, tile)

    def one(rows: Tensor) -> Tensor:
        return _weights_from_tiles([_tile_logits(rows, weight, bias, lo, hi) for lo, hi in grid], V, shift)

    return _per_text(hidden, spans, V, one)


def _streamed_one(rows: Tensor, weight: Tensor, bias: Tensor | None, shift: float, tile: int) -> Tensor:
    """(n, H) rows -> (V,) weights holding one tile of logits at a time: statistics pass, weights pass."""
    V = weight.shape[0]
    grid = _grid(V, tile)
    means = torch.empty(rows.shape[0], len(grid), dtype=torch.float32, device=rows.device)  # (n, n_tiles)
    m2s = torch.empty_like(means)
    for i, (lo, hi) in enumerate(grid):
        means[:, i], m2s[:, i] = _moments(_tile_logits(rows, weight, bias, lo, hi))
    widths = torch.tensor([hi - lo for lo, hi in grid], device=rows.device)  # (n_tiles,)
    mean, std = _standardiser(means, m2s, widths)  # (n, 1) each
    out = torch.empty(V, dtype=torch.float32, device=rows.device)
    for lo, hi in grid:  # the logits again, tile by tile: never all of them at once
        out[lo:hi] = _tile_weights(_tile_logits(rows, weight, bias, lo, hi), mean, std, shift)
    return out


def sparse_head_streamed(
    hidden: Tensor, spans: Spans, weight: Tensor, bias: Tensor | None, shift: float, tile: int = TILE
) -> Tensor:
    """sparse_head_ref's result bit for bit, holding one (n, tile) block of logits at a time (no autograd)."""
    validate_sparse_inputs(hidden, spans, weight, bias)
    V = weight.shape[0]
    with torch.no_grad():
        return _per_text(hidden, spans, V, lambda rows: _streamed_one(rows, weight, bias, shift, tile))


def sparse_head_torch(
    hidden: Tensor,
    spans: Spans,
    weight: Tensor,
    bias: Tensor | None,
    shift: float,
    tile: int = TILE,
    stream_above: int = STREAM_ABOVE_BYTES,
) -> Tensor:
    """The PyTorch backend: per text, materialised when gradients are needed or its logits are small,
    streamed otherwise (both give the same bits, so the choice is memory and speed only)."""
    validate_sparse_inputs(hidden, spans, weight, bias)
    V = weight.shape[0]
    grid = _grid(V, tile)
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )

    def one(rows: Tensor) -> Tensor:
        if not grad and rows.shape[0] * V * 4 > stream_above:
            with torch.no_grad():
                return _streamed_one(rows, weight, bias, shift, tile)
        return _weights_from_tiles([_tile_logits(rows, weight, bias, lo, hi) for lo, hi in grid], V, shift)

    return _per_text(hidden, spans, V, one)


def sparse_head_module(hidden: Tensor, spans: Spans, head: torch.nn.Module, shift: float) -> Tensor:
    """(B, V) weights through the head's own forward, one text at a time: for a head that is not a
    plain nn.Linear (a LoRA wrapper, a quantised layer), whose logits only it can compute."""
    if hidden.dim() != 3 or len(spans) != hidden.shape[0]:
        raise ValueError(
            f"hidden must be (B, T, H) with one span per row; got {tuple(hidden.shape)}, {len(spans)} spans"
        )
    rows: list[Tensor | None] = [
        sparse_weights_ref(head(hidden[b, s:e]), shift) if e > s else None for b, (s, e) in enumerate(spans)
    ]
    V = next((int(r.shape[0]) for r in rows if r is not None), None)
    if V is None:  # no text has a pooled position: ask the head its width once
        V = int(head(hidden[:1, :1]).shape[-1]) if hidden.shape[0] else 0
    if not rows:
        return hidden.new_zeros((0, V), dtype=torch.float32)
    return torch.stack([r if r is not None else hidden.new_zeros(V, dtype=torch.float32) for r in rows])  # (B, V)
