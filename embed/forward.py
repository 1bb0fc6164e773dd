"""One forward over a batch of encoded texts, and pooling to one vector per text.

Rows are right-padded with explicit position ids, so a real token never sees padding and its
positions do not depend on the other rows (a text's vector does not depend on its batch).

Or packed (`pack=True`; as text-embeddings-inference runs variable-length batches): several texts
share a row, each with its own positions from 0 and a block of the mask of its own, so a token sees
only its own text's tokens: the same vector in exact arithmetic (fp32: cosine 1.0 to the padded
forward), with almost no padding, whatever lengths arrive together. The hidden states come back
unpacked, one right-padded row per text, so pooling and the sparse head do not know the difference.
The engine packs a batch where `packable` says it pays: short texts whose packed grid is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.embed.modes import Encoded, ForwardSpec
from lodestar.embed.runtime import Runtime
from lodestar.embed.types import SPARSE_CAP, SPARSE_SHIFT
from lodestar.kernels import masked_mean_pool, sparse_head
from lodestar.kernels.sparse import sparse_weights_ref


def attention_mask(lengths: torch.Tensor, T: int, bidirectional: bool) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where a query may attend a key."""
    keys = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
    mask = keys[:, None, None, :].expand(-1, 1, T, T)  # (B, 1, T, T)
    if not bidirectional:
        causal = torch.ones(T, T, dtype=torch.bool, device=lengths.device).tril()  # (T, T)
        mask = mask & causal
    return mask


PACK_ROW_TOKENS = 128  # a packed row holds up to this many tokens, or the longest text's own length
# Texts up to this long are packed; a batch with a longer one runs one text a row. Long texts fill a
# row each anyway, and packing them only adds masked attention and ragged row ends: 64 Cranfield
# abstracts (160-300 words) served 25% slower packed than length-sorted one a row (docs/results.md).
PACK_MAX_TOKENS = 64
# Packed only when the packed grid is this much smaller than one text a row: rows of 128 attend over
# more keys than rows of short texts do, so packing texts of like lengths (a length-sorted batch,
# little padding to save) ran 10-13% slower at 16-32 texts a batch; arrival order saved 2x.
PACK_GAIN = 0.9


def packable(lengths: list[int]) -> bool:
    """Whether a batch of texts of `lengths` runs packed (where the runtime packs at all): short
    texts only, and only when packing saves padding (PACK_MAX_TOKENS, PACK_GAIN)."""
    longest = max(lengths)
    if longest > PACK_MAX_TOKENS:
        return False
    _, _, fill = pack_rows(lengths)
    return len(fill) * max(fill) < PACK_GAIN * len(lengths) * longest


@dataclass
class Layout:
    """Where each text of a batch sits in the forward's (rows, T) grid: text i is row[i], from
    column offset[i], lengths[i] tokens."""

    ids: torch.Tensor  # (rows, T)
    positions: torch.Tensor  # (rows, T): each text counts from 0
    mask: torch.Tensor  # (rows, 1, T, T) bool: True where a query may attend a key
    row: torch.Tensor  # (N,)
    offset: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (N,)


def padded_layout(
    batch: list[Encoded], pad: int, T: int, bidirectional: bool, device: torch.device | None = None
) -> Layout:
    """One text a row, right-padded to T; on `device` (the (B, 1, T, T) mask is built there)."""
    B = len(batch)
    ids = torch.full((B, T), pad, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e)] = torch.tensor(e.ids, dtype=torch.long)
    lengths = torch.tensor([len(e) for e in batch], device=device)  # (B,)
    positions = torch.arange(T, device=device)[None, :].expand(B, T)  # (B, T)
    rows = torch.arange(B, device=device)
    mask = attention_mask(lengths, T, bidirectional)
    return Layout(ids.to(device), positions, mask, rows, torch.zeros_like(rows), lengths)


def pack_rows(lengths: list[int]) -> tuple[list[int], list[int], list[int]]:
    """First-fit decreasing of texts of `lengths` into rows of max(PACK_ROW_TOKENS, the longest)
    tokens -> (each text's row, its offset in the row, each row's tokens)."""
    cap = max(PACK_ROW_TOKENS, max(lengths))
    fill: list[int] = []
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((r for r, f in enumerate(fill) if f + n <= cap), len(fill))
        if r == len(fill):
            fill.append(0)
        row[i], offset[i] = r, fill[r]
        fill[r] += n
    return row, offset, fill


def packed_layout(batch: list[Encoded], pad: int, bidirectional: bool, device: torch.device | None = None) -> Layout:
    """Texts packed into rows by pack_rows (first-fit decreasing: the rows end up nearly full); on
    `device` (the (rows, 1, T, T) mask is built there from the columns' text indices)."""
    row, offset, fill = pack_rows([len(e) for e in batch])
    B, T = len(fill), max(fill)
    ids = torch.full((B, T), pad, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    segment = torch.full((B, T), -1, dtype=torch.long)  # which text a column holds; -1: padding
    for i, e in enumerate(batch):
        r, o, n = row[i], offset[i], len(e)
        ids[r, o : o + n] = torch.tensor(e.ids, dtype=torch.long)
        positions[r, o : o + n] = torch.arange(n)
        segment[r, o : o + n] = i
    segment = segment.to(device)
    mask = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)  # (B, T, T)
    if not bidirectional:
        mask &= torch.ones(T, T, dtype=torch.bool, device=device).tril()
    # a padding column attends itself only: no query row is empty (softmax over nothing is NaN)
    mask |= torch.eye(T, dtype=torch.bool, device=device)[None] & (segment < 0)[:, :, None]
    lengths = torch.tensor([len(e) for e in batch], device=device)
    return Layout(
        ids.to(device),
        positions.to(device),
        mask[:, None],
        torch.tensor(row, device=device),
        torch.tensor(offset, device=device),
        lengths,
    )


def unpack(hidden: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(rows, T, H) states of a packed forward -> (N, longest, H): text i's tokens at [i, :len_i];
    the columns past a text's end hold another column's state (masked out by every reader)."""
    rows, T, H = hidden.shape
    n = int(layout.lengths.max())
    cols = (layout.offset[:, None] + torch.arange(n, device=layout.offset.device)[None, :]).clamp(max=T - 1)  # (N, n)
    flat = (layout.row[:, None] * T + cols).to(hidden.device)
    return hidden.reshape(rows * T, H)[flat]


def _prepend_hook(rows: torch.Tensor, placeholder: torch.Tensor, last: torch.Tensor) -> Any:
    """Pre-hook: the placeholder's input state becomes the previous layer's last-token state, for
    each text at (rows[i], placeholder[i]) and (rows[i], last[i])."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            hidden = args[0].clone()  # (B, T, H)
            hidden[rows, placeholder] = hidden[rows, last]
            return (hidden, *args[1:]), kwargs
        hidden = kwargs["hidden_states"].clone()
        hidden[rows, placeholder] = hidden[rows, last]
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def hidden_states(
    backbone: Backbone, batch: list[Encoded], spec: ForwardSpec, runtime: Runtime | None = None, pack: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the decoder (on `runtime`, default eager; embed/runtime.py), texts one a row or packed
    (`pack`) -> (hidden (N, T, H) at spec.output_layer, one row per text, lengths (N,)); T may
    include padding the runtime asked for."""
    device = backbone.device
    runtime = runtime or Runtime()
    pad = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
    if pack:
        layout = packed_layout(batch, pad, spec.bidirectional, device)
    else:
        T = runtime.padded_length(max(len(e) for e in batch))
        layout = padded_layout(batch, pad, T, spec.bidirectional, device)

    layers = backbone.layers
    handles = []
    captured: dict[str, torch.Tensor] = {}
    # The model is shared (generation and compression run forwards on it too, each under the lock):
    # hooks go on and come off only while this forward holds the lock, or another caller's forward
    # would run them with this batch's positions.
    with backbone.lock:
        try:
            if spec.prepend is not None:
                placeholder = torch.tensor(
                    [e.placeholder if e.placeholder is not None else 0 for e in batch], device=device
                )
                hook = _prepend_hook(layout.row, layout.offset + placeholder, layout.offset + layout.lengths - 1)
                end = min(spec.prepend.end, len(layers) - 1)
                for layer in list(layers)[spec.prepend.start : end + 1]:
                    handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            if spec.output_layer != -1:
                target = layers[spec.output_layer]

                def capture(module: Any, args: tuple, output: Any) -> None:
                    captured["h"] = output[0] if isinstance(output, tuple) else output

                handles.append(target.register_forward_hook(capture))
            with backbone.adapters.use(spec.adapter), torch.inference_mode(), runtime.context(backbone):
                out = runtime.decoder(backbone)(
                    input_ids=layout.ids, attention_mask=layout.mask, position_ids=layout.positions, use_cache=False
                )
        finally:
            for h in handles:
                h.remove()
    hidden = captured.get("h", out.last_hidden_state)  # (rows, T, H)
    if pack:
        hidden = unpack(hidden, layout)
    return hidden, layout.lengths


def pool_weights(batch: list[Encoded], T: int, device: torch.device) -> torch.Tensor:
    """(B, T) float weights: 1 on each row's pooled span (a single token for last-token modes)."""
    w = torch.zeros(len(batch), T, dtype=torch.float32)
    for i, e in enumerate(batch):
        w[i, e.pool_start : e.pool_end] = 1.0
    return w.to(device)


def embed_batch(
    backbone: Backbone, batch: list[Encoded], spec: ForwardSpec, runtime: Runtime | None = None, pack: bool = False
) -> Any:
    """Pooled float32 embeddings (B, H) for one batch that shares `spec` (texts packed into shared
    rows with `pack`); with spec.sparse, also the SPARSE_CAP largest vocabulary weights per text ->
    (dense, ids (B, K), weights (B, K))."""
    hidden, _ = hidden_states(backbone, batch, spec, runtime, pack)
    weights = pool_weights(batch, hidden.shape[1], hidden.device)
    dense = masked_mean_pool(hidden, weights).float().cpu()  # (B, H)
    if not spec.sparse:
        return dense
    with backbone.lock, backbone.adapters.use(spec.adapter), torch.inference_mode():
        vocab = vocab_weights(backbone.model.get_output_embeddings(), hidden, batch)  # (B, V)
    top = torch.topk(vocab, min(SPARSE_CAP, vocab.shape[1]), dim=1)
    return dense, top.indices.cpu(), top.values.float().cpu()


def splade_weights(logits: torch.Tensor) -> torch.Tensor:
    """(n, V) LM-head logits of one text's pooled positions -> (V,) SPLADE weights:
    log(1 + relu(z - SPARSE_SHIFT)) max-pooled over positions, z the logits standardised per position.
    A decoder's softmax ignores where its logits sit (SmolLM2's are positive for ~90% of the
    vocabulary at every position), so raw log(1 + relu(logits)) would be dense from the start;
    standardised and shifted, a text starts with its own tokens (which the echo copy predicts at
    z ~ 6) plus a few hundred expansions, and training moves the weights from there.
    The definition, with its order of arithmetic, is lodestar.kernels.sparse."""
    return sparse_weights_ref(logits, SPARSE_SHIFT)


def vocab_weights(lm_head: Any, hidden: torch.Tensor, batch: list[Encoded]) -> torch.Tensor:
    """Learned-sparse (SPLADE) weights (B, V) of each row's pooled span (echo: the second copy,
    which has seen the whole text; see splade_weights). The LM head runs on the pooled positions
    only: full (B, T, V) logits would cost more than the decoder. The kernels' dispatcher runs it:
    fused on a GPU (the logits never leave registers), a tile at a time on CPU (bounded memory)."""
    return sparse_head(hidden, [(e.pool_start, e.pool_end) for e in batch], lm_head, SPARSE_SHIFT)
