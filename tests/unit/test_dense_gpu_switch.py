"""LODESTAR_DEVICE decides whether dense indexes search on a GPU copy (retrieve.faiss_runtime.use_gpu).

No GPU here: FAISS's GPU entry points are replaced by stand-ins that clone the index on the CPU and
record what they were asked, which is enough to check the switch, the device number, that searches
go to the copy, and that snapshots come from the CPU index. tests/gpu/test_faiss_gpu.py runs the
real thing on a CUDA machine with faiss-gpu.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from lodestar.retrieve import faiss_runtime
from lodestar.retrieve.dense import DenseIndex
from lodestar.retrieve.faiss_runtime import use_gpu


class _FakeGpu:
    """Stand-ins for faiss.StandardGpuResources / index_cpu_to_gpu / GpuParameterSpace."""

    def __init__(self) -> None:
        self.devices: list[int] = []
        self.searches = 0

    def to_gpu(self, res: Any, device: int, index: Any) -> Any:
        self.devices.append(device)
        copy = faiss.clone_index(index)
        fake = self

        class Counting:
            """Forwards to the CPU clone, counting searches."""

            def search(self, q: np.ndarray, k: int) -> Any:
                fake.searches += 1
                return copy.search(q, k)

            def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
                copy.add_with_ids(x, ids)

        return Counting()


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeGpu]:
    """One pretend GPU; the module's switch is restored after the test."""
    fake = _FakeGpu()
    monkeypatch.setattr(faiss_runtime, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake.to_gpu, raising=False)
    monkeypatch.setattr(faiss_runtime, "_GPU_DEVICE", None)
    yield fake


def _filled(spec: str = "Flat") -> tuple[DenseIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    index = DenseIndex(16, spec, "cosine")
    index.add(np.arange(300), x)
    return index, x


def test_cpu_device_keeps_searches_on_the_cpu(fake_gpu: _FakeGpu) -> None:
    """LODESTAR_DEVICE=cpu: no GPU copy even where FAISS could make one."""
    assert use_gpu("cpu") is False
    index, x = _filled()
    index.search(x[:5], 3)
    assert fake_gpu.devices == [] and fake_gpu.searches == 0


def test_cuda_device_searches_a_gpu_copy_and_snapshots_the_cpu_index(fake_gpu: _FakeGpu) -> None:
    """LODESTAR_DEVICE=cuda:0: unfiltered searches go to the GPU copy with the CPU's answers; adds
    reach both; the snapshot is the CPU index's, and a restored index searches on the GPU again."""
    assert use_gpu("cpu") is False
    cpu_index, x = _filled()
    want = cpu_index.search(x[:5], 3)
    assert use_gpu("cuda:0") is True
    index, _ = _filled()
    got = index.search(x[:5], 3)
    assert fake_gpu.devices == [0] and fake_gpu.searches == 1
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    extra = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    index.add(np.array([999]), extra)  # mirrored into the GPU copy, not a rebuild
    assert index.search(extra, 1)[1][0, 0] == 999 and fake_gpu.devices == [0]
    assert index.to_bytes() == _with_extra(cpu_index, extra).to_bytes()
    restored = DenseIndex.from_bytes(index.to_bytes())
    restored.search(x[:1], 3)
    assert fake_gpu.devices == [0, 0]


def _with_extra(index: DenseIndex, extra: np.ndarray) -> DenseIndex:
    index.add(np.array([999]), extra)
    return index


def test_filtered_searches_stay_on_the_cpu(fake_gpu: _FakeGpu) -> None:
    """Filters run inside FAISS's CPU search (selectors); the GPU copy answers unfiltered ones only."""
    use_gpu("cuda")
    index, x = _filled()
    scores, ids = index.search(x[:2], 3, allowed=np.array([5, 6, 7]))
    assert set(ids.ravel().tolist()) <= {5, 6, 7} and fake_gpu.searches == 0


def test_a_gpu_faiss_does_not_have_stays_on_the_cpu(fake_gpu: _FakeGpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:3 on a one-GPU machine, or faiss-cpu (no GPUs): CPU only."""
    assert use_gpu("cuda:3") is False
    monkeypatch.setattr(faiss_runtime, "gpu_count", lambda: 0)
    assert use_gpu("cuda") is False
