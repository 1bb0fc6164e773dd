"""Embedding hot-path kernels: masked mean pooling and L2 normalisation.

Each op has a plain-PyTorch reference (``lodestar.kernels.reference``) and a Triton
kernel (``lodestar.kernels.triton_pooling``, imported only when used); the functions
exported here pick between them (``backend="auto" | "torch" | "triton"``).
"""

from __future__ import annotations

from .dispatch import available_backends, l2_normalize, masked_mean_pool, resolve_backend

__all__ = ["masked_mean_pool", "l2_normalize", "available_backends", "resolve_backend"]
