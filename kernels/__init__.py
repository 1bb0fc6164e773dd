"""Embedding hot-path kernels: masked mean pooling, L2 normalisation, pool + normalise + quantise in
one pass, and the fused learned-sparse head.

Each op has a plain-PyTorch reference (``lodestar.kernels.reference``, ``lodestar.kernels.sparse``)
and a Triton kernel (``triton_pooling``, ``triton_embed``, ``triton_sparse``, imported only when
used); the functions exported here pick between them (``backend="auto" | "torch" | "triton"``).
"""

from __future__ import annotations

from .dispatch import (
    available_backends,
    l2_normalize,
    masked_mean_pool,
    pool_embed,
    resolve_backend,
    sparse_head,
)

__all__ = [
    "available_backends",
    "l2_normalize",
    "masked_mean_pool",
    "pool_embed",
    "resolve_backend",
    "sparse_head",
]
