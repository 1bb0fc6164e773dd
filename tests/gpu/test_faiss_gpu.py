"""FAISS on the GPU (faiss-gpu and a CUDA device): LODESTAR_DEVICE=cuda puts dense searches on a GPU
copy; the answers are the CPU index's, and snapshots round-trip through the CPU index."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from lodestar.retrieve import faiss_runtime  # noqa: E402
from lodestar.retrieve.dense import DenseIndex  # noqa: E402
from lodestar.retrieve.faiss_runtime import use_gpu  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(faiss_runtime.gpu_count() == 0, reason="needs faiss-gpu and a CUDA device"),
]


@pytest.fixture
def on_gpu() -> Iterator[None]:
    """Dense indexes built inside the test search on GPU 0; CPU-only again afterwards."""
    assert use_gpu("cuda:0")
    yield
    use_gpu("cpu")


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("spec", ["Flat", "IVF256,Flat"])
def test_gpu_search_matches_cpu(spec: str, on_gpu: None) -> None:
    """Searches on the GPU copy return the CPU index's neighbours (all of them for Flat, nearly all for IVF)."""
    x, q = _vectors(20000, 576), _vectors(64, 576, seed=1)
    gpu = DenseIndex(576, spec, "cosine")
    gpu.add(np.arange(20000), x)
    got_s, got_i = gpu.search(q, 10)
    assert gpu._gpu is not None, "the search did not go to the GPU"
    use_gpu("cpu")
    cpu = DenseIndex(576, spec, "cosine")
    cpu.add(np.arange(20000), x)
    want_s, want_i = cpu.search(q, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, want_i)])
    assert overlap >= (0.99 if spec == "Flat" else 0.95), overlap
    np.testing.assert_allclose(got_s[:, 0], want_s[:, 0], rtol=1e-4, atol=1e-4)


def test_snapshot_round_trip_from_a_gpu_index(on_gpu: None) -> None:
    """A GPU-searched index snapshots its CPU index; restored, it searches on the GPU with the same answers."""
    x = _vectors(5000, 64)
    index = DenseIndex(64, "Flat", "cosine")
    index.add(np.arange(5000), x)
    before = index.search(x[:8], 5)
    restored = DenseIndex.from_bytes(index.to_bytes())
    after = restored.search(x[:8], 5)
    assert restored._gpu is not None
    np.testing.assert_array_equal(before[1], after[1])
    index.remove(np.arange(10))  # a remove drops the GPU copy; the next search makes a fresh one
    assert 0 not in index.search(x[:1], 5)[1]
