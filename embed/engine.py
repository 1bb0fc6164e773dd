"""The embedding engine: validates a request, builds inputs, batches forwards, shapes the output.

Plain Python and tensors: no gRPC here. The servicer converts protos to `EmbedOptions` and back.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.backbone import Backbone
from lodestar.cancel import current as current_token
from lodestar.embed.batcher import Batcher
from lodestar.embed.forward import embed_batch, packable
from lodestar.embed.modes import MODES, Encoded, ForwardSpec, InputBuilder, TokenPrepend, get_mode
from lodestar.embed.output import DTYPES, pack, shape_vectors
from lodestar.embed.runtime import Chooser, build_runtime
from lodestar.embed.types import SPARSE_CAP, EmbedOptions, EmbedResult
from lodestar.errors import Cancelled, InvalidInput

DEFAULT_SPARSE_TOP_K = 256


def sparse_rows(ids: Any, weights: Any, o: EmbedOptions) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text (token ids, weights) by decreasing weight: the request's top_k, above its threshold."""
    k = o.sparse_top_k or DEFAULT_SPARSE_TOP_K
    out = []
    for row_ids, row_w in zip(ids.numpy(), weights.numpy()):
        row_ids, row_w = row_ids[:k], row_w[:k]
        keep = row_w > o.sparse_threshold
        out.append((row_ids[keep].astype(np.int64), row_w[keep].astype(np.float32)))
    return out


@dataclass(frozen=True)
class EngineConfig:
    default_mode: str = "mean"
    max_texts_per_request: int = 1024
    max_tokens: int = 512  # per text, template included; capped by the model's context
    max_batch_tokens: int = 16384  # padded tokens per forward
    max_queued_texts: int = 16384  # beyond this, RESOURCE_EXHAUSTED
    token_prepend: TokenPrepend = field(default_factory=TokenPrepend)
    runtime: str = "eager"  # how forwards run (embed/runtime.py); the server's setting defaults to auto
    runtime_cache: Path | None = None  # where a runtime keeps what it builds (ONNX exports); None: a temp folder
    pack: bool = True  # texts packed into shared rows where the runtime can (embed/forward.py); False: one a row


@dataclass
class Prepared:
    mode: str
    spec: ForwardSpec
    items: list[Encoded]
    options: EmbedOptions


class EmbeddingEngine:
    def __init__(self, backbone: Backbone, config: EngineConfig | None = None) -> None:
        self.backbone = backbone
        self.config = config or EngineConfig()
        get_mode(self.config.default_mode)
        self.max_tokens = min(self.config.max_tokens, backbone.max_tokens)
        self.inputs = InputBuilder(backbone.tokenizer)
        self.runtime = Chooser(build_runtime(self.config.runtime, backbone.device, self.config.runtime_cache))
        self.batcher = Batcher(
            lambda spec, batch: self._run(spec, batch),  # looked up per call, so it can be wrapped
            max_batch_tokens=max(self.config.max_batch_tokens, self.max_tokens),
            max_queued_texts=self.config.max_queued_texts,
            packs=self._packs,
        )

    def _packs(self, spec: ForwardSpec) -> bool:
        return self.config.pack and self.runtime.for_spec(self.backbone, spec).packs

    def _run(self, spec: ForwardSpec, batch: list[Encoded]) -> Any:
        pack = self._packs(spec) and packable([len(e) for e in batch])
        return embed_batch(self.backbone, batch, spec, self.runtime.for_spec(self.backbone, spec), pack=pack)

    def close(self) -> None:
        self.batcher.close()

    # --- validation and input building -------------------------------------------------------

    def _prepend(self, o: EmbedOptions) -> TokenPrepend:
        base = self.config.token_prepend
        n = self.backbone.num_layers
        # The server's default range (1..7) is sized for a deep model: clamp it to this model's
        # layers, so a shallow model's default request is valid. A request's own values are not clamped.
        tp = TokenPrepend(
            start=min(base.start, n - 1) if o.start_layer is None else o.start_layer,
            end=min(base.end, n - 1) if o.end_layer is None else o.end_layer,
            output_layer=base.output_layer if o.output_layer is None else o.output_layer,
        )
        if not (0 <= tp.start <= tp.end < n):
            raise InvalidInput(
                f"token_prepend layers must satisfy 0 <= start_layer <= end_layer < {n}; got {tp.start}..{tp.end}"
            )
        if not (tp.output_layer == -1 or 0 <= tp.output_layer < n):
            raise InvalidInput(f"token_prepend output_layer must be -1 (final) or in 0..{n - 1}; got {tp.output_layer}")
        return tp

    def prepare(self, texts: list[str], options: EmbedOptions) -> Prepared:
        """Validate everything before any work is queued; raises InvalidInput naming the limit."""
        limit = self.config.max_texts_per_request
        if not texts:
            raise InvalidInput(f"texts is empty: send 1 to {limit} texts")
        if len(texts) > limit:
            raise InvalidInput(f"{len(texts)} texts in one request; the limit is max_texts_per_request={limit}")
        if len(texts) > self.config.max_queued_texts:  # would be RESOURCE_EXHAUSTED ("retry later") forever
            raise InvalidInput(
                f"{len(texts)} texts in one request; this server queues at most "
                f"max_queued_texts={self.config.max_queued_texts}: split the request"
            )
        for i, t in enumerate(texts):
            if not t or not t.strip():
                raise InvalidInput(f"text {i} is empty")
        mode = get_mode(options.mode or self.config.default_mode)
        template = mode.check_prompt(options.prompt)
        hidden = self.backbone.hidden_size
        if not 0 <= options.dimensions <= hidden:
            raise InvalidInput(f"dimensions={options.dimensions} is out of range: use 1..{hidden} (or 0 for all)")
        if options.dtype not in DTYPES:
            raise InvalidInput(f"unknown output dtype {options.dtype!r}: valid are {', '.join(DTYPES)}")
        max_tokens = options.max_tokens or self.max_tokens
        if max_tokens > self.max_tokens:
            raise InvalidInput(f"max_tokens={max_tokens} is above the server's limit of {self.max_tokens}")
        if options.adapter:
            self.backbone.adapters.resolve(options.adapter)
        prepend = self._prepend(options) if mode.uses_placeholder else None
        spec = mode.forward_spec(options.adapter, prepend)
        if options.sparse:
            if spec.output_layer != -1:
                raise InvalidInput("sparse output reads the LM head of the final layer: leave output_layer at -1")
            if not 0 <= options.sparse_top_k <= SPARSE_CAP:
                raise InvalidInput(
                    f"sparse top_k must be in 0..{SPARSE_CAP} (0 = {DEFAULT_SPARSE_TOP_K}); got {options.sparse_top_k}"
                )
            if not options.sparse_threshold >= 0:
                raise InvalidInput(f"sparse threshold must be >= 0; got {options.sparse_threshold}")
            spec = replace(spec, sparse=True)
        items = self.inputs.build_many(mode, list(texts), template, options.instruction, max_tokens, options.truncate)
        return Prepared(mode=mode.name, spec=spec, items=items, options=options)

    def finish(self, prepared: Prepared, raw: Any) -> EmbedResult:
        o = prepared.options
        dense, sparse = (raw[0], sparse_rows(raw[1], raw[2], o)) if isinstance(raw, tuple) else (raw, None)
        vectors = shape_vectors(dense.numpy(), o.dimensions or None, o.normalize)
        return EmbedResult(
            vectors=vectors,
            packed=pack(vectors, o.dtype),
            token_counts=[len(e) for e in prepared.items],
            truncated=[e.truncated for e in prepared.items],
            model=self.backbone.model_id,
            mode=prepared.mode,
            sparse=sparse,
            sparse_tokens=[self.backbone.tokenizer.convert_ids_to_tokens(ids.tolist()) for ids, _ in sparse]
            if sparse is not None and o.sparse_tokens
            else None,
            has_dense=not o.sparse or o.with_dense,
        )

    # --- entry points ------------------------------------------------------------------------

    def embed(self, texts: list[str], options: EmbedOptions | None = None, timeout: float | None = None) -> EmbedResult:
        """Blocking embed through the shared batcher. Under a cancellation token (lodestar.cancel) the
        request leaves the batcher when the token is cancelled, and its deadline bounds the wait."""
        prepared = self.prepare(texts, options or EmbedOptions())
        token = current_token()
        if token is not None:
            token.check()
            left = token.remaining()
            timeout = left if timeout is None else min(timeout, left) if left is not None else timeout
        future = self.batcher.submit(prepared.spec, prepared.items, timeout)
        if token is not None:
            token.on_cancel(future.cancel)
        try:
            raw = future.result()
        except CancelledError:
            if token is not None:
                token.check()
            raise Cancelled("the embedding was cancelled (the server is shutting down)") from None
        return self.finish(prepared, raw)

    async def embed_async(self, texts: list[str], options: EmbedOptions, timeout: float | None = None) -> EmbedResult:
        """Event-loop friendly: tokenising and the forward both run off the loop; a cancelled
        caller (client gone, deadline passed) takes its queued work out of the batcher."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(None, self.prepare, texts, options)
        future = self.batcher.submit(prepared.spec, prepared.items, timeout)
        try:
            raw = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise
        return self.finish(prepared, raw)

    def embed_direct(self, texts: list[str], options: EmbedOptions | None = None, batch_size: int = 32) -> EmbedResult:
        """No batcher: fixed-size batches in input order (evaluation, and the benchmark's ceiling)."""
        prepared = self.prepare(texts, options or EmbedOptions())
        import torch

        rows = [
            self._run(prepared.spec, prepared.items[i : i + batch_size])
            for i in range(0, len(prepared.items), batch_size)
        ]
        if isinstance(rows[0], tuple):
            return self.finish(prepared, tuple(torch.cat(col) for col in zip(*rows)))
        return self.finish(prepared, torch.cat(rows))

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of `text` (for chunking by tokens)."""
        enc = self.backbone.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def check_mode(self, mode: str, prompt: str = "") -> None:
        """Refuse an unknown mode name (listing the valid ones) or a prompt that does not fit the mode;
        what collections check when created (the `lodestar.embedding.Embedder` retrieval takes)."""
        get_mode(mode).check_prompt(prompt)

    def info(self) -> dict[str, Any]:
        bb = self.backbone
        return {
            "model": bb.model_id,
            "dimensions": bb.hidden_size,
            "max_tokens": self.max_tokens,
            "max_texts_per_request": self.config.max_texts_per_request,
            "modes": [(m.name, m.description, m.default_prompt) for m in MODES.values()],
            "default_mode": self.config.default_mode,
            "adapters": sorted(set(bb.adapters.available()) | set(bb.adapters.resident())),
            "dtypes": list(DTYPES),
            "torch_dtype": str(bb.dtype).replace("torch.", ""),
            "runtime": self.runtime.runtime.name,
            "device": str(bb.device),
            "num_layers": bb.num_layers,
        }
