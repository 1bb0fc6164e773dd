"""Shaping pooled vectors for the wire: dimension prefix, normalisation, and output dtype packing."""

from __future__ import annotations

import numpy as np

from lodestar.embedding import Packed  # the result type other engines see; re-exported here
from lodestar.errors import InvalidInput

__all__ = ["DTYPES", "F16_MAX", "Packed", "pack", "shape_vectors", "unpack"]

DTYPES = ("float32", "float16", "int8", "binary")


def shape_vectors(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Keep the first `dimensions` columns (Matryoshka-style prefix), then L2-normalise if asked."""
    out = vectors[:, :dimensions] if dimensions else vectors  # (N, D)
    out = np.ascontiguousarray(out, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out


F16_MAX = float(np.finfo(np.float16).max)  # 65504


def pack(vectors: np.ndarray, dtype: str) -> Packed:
    """float32 (N, D) -> bytes in `dtype` (int8: per-row symmetric scale; binary: sign bits, MSB first)."""
    n, d = vectors.shape
    if dtype == "float32":
        data = vectors.astype("<f4").tobytes()
    elif dtype == "float16":
        top = float(np.abs(vectors).max()) if vectors.size else 0.0
        if not top <= F16_MAX:  # astype would turn it into inf (unnormalised hidden states can be large)
            raise InvalidInput(
                f"a value ({top:.6g}) is beyond float16's range (±{F16_MAX:g}): ask for dtype float32, "
                "or keep normalize on"
            )
        data = vectors.astype("<f2").tobytes()
    elif dtype == "int8":
        scale = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), 1e-12)
        data = np.clip(np.rint(vectors / scale * 127.0), -127, 127).astype(np.int8).tobytes()
    elif dtype == "binary":
        data = np.packbits(vectors > 0, axis=1).tobytes()
    else:
        raise InvalidInput(f"unknown output dtype {dtype!r}: valid are {', '.join(DTYPES)}")
    return Packed(data=data, shape=(n, d), dtype=dtype)


def unpack(data: bytes, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Inverse of `pack` as a numpy array (binary -> uint8 0/1 of shape (N, D))."""
    n, d = shape
    if dtype == "float32":
        return np.frombuffer(data, dtype="<f4").reshape(n, d)
    if dtype == "float16":
        return np.frombuffer(data, dtype="<f2").reshape(n, d)
    if dtype == "int8":
        return np.frombuffer(data, dtype=np.int8).reshape(n, d)
    if dtype == "binary":
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8).reshape(n, -1), axis=1)
        return bits[:, :d]
    raise ValueError(f"unknown dtype {dtype!r}: valid are {', '.join(DTYPES)}")
