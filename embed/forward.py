"""One forward over a batch of encoded texts, and pooling to one vector per text.

Rows are right-padded with explicit position ids, so a real token never sees padding and its
positions do not depend on the other rows (a text's vector does not depend on its batch).
"""

from __future__ import annotations

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


def _prepend_hook(placeholder: torch.Tensor, last: torch.Tensor) -> Any:
    """Pre-hook: the placeholder's input state becomes the previous layer's last-token state."""
    rows = torch.arange(placeholder.numel(), device=placeholder.device)

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
    backbone: Backbone, batch: list[Encoded], spec: ForwardSpec, runtime: Runtime | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the decoder (on `runtime`, default eager; embed/runtime.py) -> (hidden (B, T, H) at
    spec.output_layer, lengths (B,)); T may include padding the runtime asked for."""
    device = backbone.device
    runtime = runtime or Runtime()
    B, T = len(batch), runtime.padded_length(max(len(e) for e in batch))
    pad = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
    ids = torch.full((B, T), pad, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e)] = torch.tensor(e.ids, dtype=torch.long)
    ids = ids.to(device)
    lengths = torch.tensor([len(e) for e in batch], device=device)  # (B,)
    positions = torch.arange(T, device=device)[None, :].expand(B, T)  # (B, T)
    mask = attention_mask(lengths, T, spec.bidirectional)

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
                last = lengths - 1
                end = min(spec.prepend.end, len(layers) - 1)
                for layer in list(layers)[spec.prepend.start : end + 1]:
                    handles.append(layer.register_forward_pre_hook(_prepend_hook(placeholder, last), with_kwargs=True))
            if spec.output_layer != -1:
                target = layers[spec.output_layer]

                def capture(module: Any, args: tuple, output: Any) -> None:
                    captured["h"] = output[0] if isinstance(output, tuple) else output

                handles.append(target.register_forward_hook(capture))
            with backbone.adapters.use(spec.adapter), torch.inference_mode(), runtime.context(backbone):
                out = runtime.decoder(backbone)(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
                )
        finally:
            for h in handles:
                h.remove()
    hidden = captured.get("h", out.last_hidden_state)  # (B, T, H)
    return hidden, lengths


def pool_weights(batch: list[Encoded], T: int, device: torch.device) -> torch.Tensor:
    """(B, T) float weights: 1 on each row's pooled span (a single token for last-token modes)."""
    w = torch.zeros(len(batch), T, dtype=torch.float32)
    for i, e in enumerate(batch):
        w[i, e.pool_start : e.pool_end] = 1.0
    return w.to(device)


def embed_batch(backbone: Backbone, batch: list[Encoded], spec: ForwardSpec, runtime: Runtime | None = None) -> Any:
    """Pooled float32 embeddings (B, H) for one batch that shares `spec`; with spec.sparse, also
    the SPARSE_CAP largest vocabulary weights per text -> (dense, ids (B, K), weights (B, K))."""
    hidden, _ = hidden_states(backbone, batch, spec, runtime)
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
