"""The serving engine's embedding, differentiable: same inputs (InputBuilder), same attention
masks (causal or bidirectional), same pooling; gradients flow through the LoRA weights. So an
adapter trained here behaves the same when a request names it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lodestar.embed.forward import attention_mask, vocab_weights
from lodestar.embed.modes import Encoded, InputBuilder, get_mode
from lodestar.errors import InvalidInput

TRAINABLE_MODES = ("mean", "last", "prompteol", "echo", "bidirectional")  # token_prepend's hooks are not


class TrainEncoder:
    def __init__(
        self, model: Any, tokenizer: Any, mode: str, prompt: str = "", instruction: str = "", max_tokens: int = 128
    ) -> None:
        if mode not in TRAINABLE_MODES:
            raise InvalidInput(f"mode {mode!r} cannot be trained: valid are {', '.join(TRAINABLE_MODES)}")
        self.model = model  # a *ForCausalLM with LoRA layers injected (peft_model.base_model.model)
        self.mode = get_mode(mode)
        self.template = self.mode.check_prompt(prompt)
        self.instruction = instruction
        self.max_tokens = max_tokens
        self.builder = InputBuilder(tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self.builder.build_many(self.mode, list(texts), self.template, self.instruction, self.max_tokens, True)

    def hidden(self, items: list[Encoded]) -> torch.Tensor:
        """Final hidden states (B, T, H) of right-padded rows, the mode's attention pattern."""
        B, T = len(items), max(len(e) for e in items)
        ids = torch.full((B, T), self.pad, dtype=torch.long)
        for i, e in enumerate(items):
            ids[i, : len(e)] = torch.tensor(e.ids)
        lengths = torch.tensor([len(e) for e in items])
        dev = self.device
        mask = attention_mask(lengths.to(dev), T, self.mode.bidirectional)
        positions = torch.arange(T, device=dev)[None, :].expand(B, T)
        out = self.model.get_decoder()(
            input_ids=ids.to(dev), attention_mask=mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state  # (B, T, H)

    def dense(self, texts: list[str]) -> torch.Tensor:
        """(B, H) unit vectors, pooled as the engine pools this mode."""
        items = self.encode(texts)
        hidden = self.hidden(items).float()
        w = torch.zeros(hidden.shape[:2], device=hidden.device)  # (B, T)
        for i, e in enumerate(items):
            w[i, e.pool_start : e.pool_end] = 1.0 / (e.pool_end - e.pool_start)
        return F.normalize((hidden * w[:, :, None]).sum(1), dim=-1)

    def sparse(self, texts: list[str]) -> torch.Tensor:
        """(B, V) SPLADE vocabulary weights (see embed.forward.vocab_weights)."""
        items = self.encode(texts)
        return vocab_weights(self.model.get_output_embeddings(), self.hidden(items), items)
