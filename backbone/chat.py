"""Greedy, length-bounded chat generation on the backbone, batched with left padding.

A small loop of our own instead of `model.generate`: explicit position ids (a left-padded row's
first real token is position 0, so a row's answer does not depend on its batch neighbours), a stop
set per call (end-of-turn, newline for short answers), and the backbone lock held per forward.
Shared by the abstractive compressor, the evaluation reader, the trainers and `lodestar adapt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.backbone.compat import cache_kwargs, output_cache
from lodestar.cancel import checkpoint

Message = dict[str, str]


@dataclass
class Generated:
    text: str  # decoded new tokens, stop token excluded, stripped
    prompt_tokens: int
    new_tokens: int  # generated tokens, the stop token included
    stopped: bool  # False: cut at max_new_tokens


def chat_ids(backbone: Backbone, messages: list[Message], prefix: str = "") -> list[int]:
    """Token ids of `messages` through the chat template with the assistant turn opened
    (plus `prefix`, text the assistant's reply is forced to start with)."""
    tok = backbone.tokenizer
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    ids = list(ids)
    if prefix:
        ids += tok(prefix, add_special_tokens=False)["input_ids"]
    return ids


def stop_ids(backbone: Backbone, newline: bool) -> set[int]:
    """End-of-sequence and end-of-turn tokens, plus tokens that are only a line break when asked."""
    tok = backbone.tokenizer
    stops = {t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}
    if tok.unk_token_id is not None:
        stops.discard(tok.unk_token_id)
    if newline:
        for s in ("\n", "\n\n"):
            ids = tok(s, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                stops.add(ids[0])
    return stops


def _pad_left(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, T - len(r) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def greedy_batch(
    backbone: Backbone, prompts: list[list[int]], max_new_tokens: int, stops: set[int], adapter: str | None = None
) -> list[Generated]:
    """Greedy continuation of each prompt (token ids) until a stop token or `max_new_tokens`, with
    LoRA `adapter` active (None: the base model)."""
    from transformers import DynamicCache

    tok = backbone.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = _pad_left(prompts, pad, backbone.device)
    B = ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    cache: Any = DynamicCache()
    new: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)  # (B,)
    stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=ids.device)
    step_ids = ids
    for _ in range(max_new_tokens):
        checkpoint()  # a cancelled call (lodestar.cancel) stops before its next forward
        # The lock per forward, not per call: embedding requests interleave with a long generation.
        with backbone.lock, backbone.adapters.use(adapter):
            out = backbone.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                **cache_kwargs(backbone.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
        cache = output_cache(out)
        nxt = out.logits[:, -1, :].argmax(-1)  # (B,)
        for i in range(B):
            if not done[i]:
                new[i].append(int(nxt[i]))
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()):
            break
        step_ids = nxt[:, None]  # (B, 1)
        positions = positions[:, -1:] + 1  # (B, 1)
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], dim=1)
    results = []
    for p, n in zip(prompts, new):
        stopped = bool(n) and n[-1] in stops
        body = n[:-1] if stopped else n
        results.append(Generated(tok.decode(body, skip_special_tokens=True).strip(), len(p), len(n), stopped))
    return results


def generate(
    backbone: Backbone,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    newline_stops: bool = False,
    batch_size: int = 8,
    adapter: str | None = None,
) -> list[Generated]:
    """Greedy generation for many prompts: length-sorted batches (little padding), input order kept."""
    stops = stop_ids(backbone, newline_stops)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Generated | None] = [None] * len(prompts)
    for s in range(0, len(order), max(1, batch_size)):
        chunk = order[s : s + batch_size]
        for i, g in zip(chunk, greedy_batch(backbone, [prompts[i] for i in chunk], max_new_tokens, stops, adapter)):
            out[i] = g
    return [g for g in out if g is not None]
