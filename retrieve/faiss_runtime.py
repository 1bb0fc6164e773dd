"""How FAISS runs here: its OpenMP threads per search and the GPU (if any) dense indexes search on.

Set process-wide: `use_gpu` once at start-up from LODESTAR_DEVICE (services/runtime.py); the thread
count per search call by `search_threads`. retrieve/dense.py reads both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss

# Which GPU dense indexes search on, or None for none; set once at start-up by `use_gpu` from
# LODESTAR_DEVICE (services/runtime.py), read when an index is built or restored.
_GPU_DEVICE: int | None = None


def gpu_device() -> int | None:
    """The GPU that dense indexes built or restored now search on (None: CPU only)."""
    return _GPU_DEVICE


# FAISS parallelises a search over its queries (and brute-force scans switch to BLAS from 20 queries),
# so one query gains nothing from more OpenMP threads; here they cost (100k x 576 Flat, 2 cores, one
# query per search: 20 ms p50 with both threads, 10.9 ms with one).
FEW_QUERIES = 20


@contextmanager
def search_threads(n_queries: int, configured: int = 0) -> Iterator[None]:
    """FAISS's OpenMP threads on the calling thread for one search of `n_queries`, restored after:
    `configured` when set, else one for a few queries and FAISS's own default for a batch."""
    n = configured if configured > 0 else (1 if n_queries < FEW_QUERIES else 0)
    if n == 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, or without CUDA)."""
    try:
        return int(faiss.get_num_gpus())
    except (AttributeError, RuntimeError):
        return 0


def use_gpu(device: str) -> bool:
    """Search dense indexes built or restored from now on with a GPU copy on `device` ('cuda',
    'cuda:N'; anything else: CPU only) when FAISS has GPU support; returns whether they will. The CPU
    index stays the one written to and snapshotted, so the GPU copy never needs copying back."""
    global _GPU_DEVICE
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else None
    _GPU_DEVICE = index if index is not None and index < gpu_count() else None
    return _GPU_DEVICE is not None
