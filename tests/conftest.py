"""Shared fixtures: the real bundled model loaded once per session, and a tiny random Llama built in
code (with the bundled tokenizer) for fast shape and edge-case tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tinymodel import CACHE_DIR, FIXTURES, build_tiny  # noqa: E402  (tests/ is on sys.path)

from lodestar.backbone import Backbone, BackboneConfig, load_backbone
from lodestar.backbone.loader import bundled_gguf, dequantised_cache
from lodestar.bench.milvus_lite import MilvusLiteServer

# The suite's servers (in-process and `lodestar serve` children, which inherit this) run the reference
# runtime. What `auto` picks on CPU, ONNX Runtime, has its own tests (tests/unit/test_embed_runtime.py,
# and a server in tests/integration/test_embed_service.py): exporting the graph of every random tiny
# model the suite builds would add minutes and test nothing more.
os.environ.setdefault("LODESTAR_EMBED_RUNTIME", "eager")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Many small sequential forwards (decoding): one intra-op thread is faster and steadier on a
    shared 2-core CPU. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bundled_folder() -> Path:
    """The bundled GGUF dequantised into the safetensors cache (done once per machine)."""
    return dequantised_cache(bundled_gguf(), CACHE_DIR)


@pytest.fixture(scope="session")
def tokenizer(bundled_folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_folder)


@pytest.fixture(scope="session")
def tiny_backbone(tokenizer) -> Backbone:  # type: ignore[no-untyped-def]
    return build_tiny(tokenizer)


@pytest.fixture(scope="session")
def backbone() -> Backbone:
    """The real bundled SmolLM2-135M-Instruct, loaded once per session."""
    return load_backbone(BackboneConfig(cache_dir=CACHE_DIR, adapter_dirs=(FIXTURES / "adapters",)))


@pytest.fixture(scope="session")
def engine(backbone: Backbone) -> Iterator:  # type: ignore[type-arg]
    from lodestar.embed.engine import EmbeddingEngine

    eng = EmbeddingEngine(backbone)
    yield eng
    eng.close()


@pytest.fixture
def tiny_engine(tiny_backbone: Backbone) -> Iterator:  # type: ignore[type-arg]
    from lodestar.embed.engine import EmbeddingEngine

    eng = EmbeddingEngine(tiny_backbone)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus Lite server process for the session (bench/milvus_lite.py); collections get unique names."""
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus") / "data")
    yield server.uri
    server.stop()
