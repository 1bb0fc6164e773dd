"""EmbedService on the client side: requests from options, results from responses (the mirror of
lodestar.services.embed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lodestar.embed.output import Packed, unpack
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.services.client.types import ModeInfo, ServerInfo
from lodestar.services.wire import enum_to_name, name_to_enum


def as_texts(texts: str | list[str] | tuple[str, ...]) -> list[str]:
    """A string is one text (not a sequence of one-character texts)."""
    return [texts] if isinstance(texts, str) else list(texts)


def request(texts: list[str], options: EmbedOptions, request_id: str = "") -> pb.EmbedRequest:
    tp = pb.TokenPrependOptions(
        start_layer=options.start_layer, end_layer=options.end_layer, output_layer=options.output_layer
    )
    sparse = (
        pb.SparseOptions(
            enabled=True,
            top_k=options.sparse_top_k,
            threshold=options.sparse_threshold,
            with_dense=options.with_dense,
            return_tokens=options.sparse_tokens,
        )
        if options.sparse
        else None
    )
    return pb.EmbedRequest(
        texts=texts,
        mode=options.mode,
        prompt=options.prompt,
        instruction=options.instruction,
        adapter=options.adapter,
        dimensions=options.dimensions,
        normalize=options.normalize,
        dtype=name_to_enum(pb.Dtype, options.dtype, "dtype"),
        truncate=pb.TRUNCATE_END if options.truncate else pb.TRUNCATE_NONE,
        max_tokens=options.max_tokens,
        token_prepend=tp,
        request_id=request_id,
        sparse=sparse,
    )


def requests(texts: list[str], options: EmbedOptions, per_request: int) -> list[pb.EmbedRequest]:
    """One request per `per_request` texts (the server's limit), so any number of texts can be embedded."""
    step = max(1, per_request)
    return [request(texts[i : i + step], options) for i in range(0, len(texts), step)] or [request([], options)]


def result(resp: pb.EmbedResponse) -> EmbedResult:
    """Decode a response; `vectors` holds the array in its wire dtype (binary: 0/1 per dimension);
    without dense output it is an empty (N, 0) array."""
    sparse = [(np.asarray(v.ids, dtype=np.int64), np.asarray(v.weights, dtype=np.float32)) for v in resp.sparse] or None
    tokens = [list(v.tokens) for v in resp.sparse] if any(v.tokens for v in resp.sparse) else None
    common: dict[str, Any] = {
        "token_counts": list(resp.token_counts),
        "truncated": list(resp.truncated),
        "model": resp.model,
        "mode": resp.mode,
        "sparse": sparse,
        "sparse_tokens": tokens,
    }
    if not resp.HasField("embeddings"):
        n = len(resp.token_counts)
        return EmbedResult(
            vectors=np.zeros((n, 0), dtype=np.float32), packed=Packed(b"", (n, 0), "float32"), has_dense=False, **common
        )
    e = resp.embeddings
    shape = (int(e.shape[0]), int(e.shape[1]))
    dtype = enum_to_name(pb.Dtype, e.dtype, "dtype") or "float32"
    return EmbedResult(vectors=unpack(e.data, shape, dtype), packed=Packed(e.data, shape, dtype), **common)


def merged(parts: list[EmbedResult]) -> EmbedResult:
    """The results of one input split over several requests, as if it had been one (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    n = sum(p.packed.shape[0] for p in parts)
    sparse = [s for p in parts for s in p.sparse or ()] if first.sparse is not None else None
    tokens = [t for p in parts for t in p.sparse_tokens or ()] if first.sparse_tokens is not None else None
    return EmbedResult(
        vectors=np.concatenate([p.vectors for p in parts]),  # (N, D)
        packed=Packed(b"".join(p.packed.data for p in parts), (n, first.packed.shape[1]), first.packed.dtype),
        token_counts=[c for p in parts for c in p.token_counts],
        truncated=[t for p in parts for t in p.truncated],
        model=first.model,
        mode=first.mode,
        sparse=sparse,
        sparse_tokens=tokens,
        has_dense=first.has_dense,
    )


def server_info(resp: pb.InfoResponse) -> ServerInfo:
    return ServerInfo(
        model=resp.model,
        dimensions=resp.dimensions,
        max_tokens=resp.max_tokens,
        max_texts_per_request=resp.max_texts_per_request,
        modes=[ModeInfo(m.name, m.description, m.default_prompt) for m in resp.modes],
        default_mode=resp.default_mode,
        adapters=list(resp.adapters),
        dtypes=list(resp.dtypes),
        torch_dtype=resp.torch_dtype,
        device=resp.device,
        num_layers=resp.num_layers,
        version=resp.version,
        runtime=resp.runtime,
    )
