"""CUDA tests for the fused kernels at the shapes of real models: the learned-sparse head under the
LM heads of SmolLM2-135M, Llama 3 8B and Qwen2.5 7B, and pool + normalise + quantise at their widths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

triton = pytest.importorskip("triton")

import lodestar.kernels as kernels  # noqa: E402
from lodestar.embed.output import pack  # noqa: E402
from lodestar.kernels.reference import pool_embed_ref  # noqa: E402
from lodestar.kernels.sparse import sparse_head_ref, sparse_head_streamed  # noqa: E402
from lodestar.kernels.triton_embed import pool_embed_triton  # noqa: E402
from lodestar.kernels.triton_sparse import sparse_head_triton  # noqa: E402

DEVICE = "cuda"
SHIFT = 4.0  # embed.types.SPARSE_SHIFT
HEADS: dict[str, tuple[int, int]] = {
    "smollm2-135m": (49152, 576),
    "llama3-8b": (128256, 4096),
    "qwen2.5-7b": (152064, 3584),
}
# One batch with a long text, a last-token text, an empty span and an odd one, padded to 512.
SPANS: list[tuple[int, int]] = [(0, 512), (0, 1), (7, 7), (3, 80)]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=list(HEADS))
def head(request: pytest.FixtureRequest) -> Iterator[tuple[str, torch.Tensor]]:
    """A random (V, H) float32 LM head of a real model's size, built on the GPU once per module."""
    V, H = HEADS[request.param]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    weight = torch.randn(V, H, device=DEVICE, generator=g) / H**0.5  # logits ~ N(0, 1) for unit hidden states
    yield request.param, weight
    del weight
    torch.cuda.empty_cache()


def _assert_sparse_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """float32: float32 accuracy; 16-bit: each logit is rounded to the head's dtype, so where the GPU's
    accumulation order flips one rounding, that entry may move by an ulp of its logit in z units."""
    assert got.shape == want.shape and got.dtype == torch.float32 and got.is_cuda
    diff = (got - want).abs()
    if dtype == torch.float32:
        assert diff.max() <= 1e-4, diff.max()
        return
    assert (diff <= 1e-4 + 1e-4 * want.abs()).float().mean() >= 0.99
    assert diff.max() < 0.1, diff.max()


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_fused_sparse_head_at_real_vocabularies(head: tuple[str, torch.Tensor], dtype_name: str) -> None:
    """The fused head against the definition for a long, a one-token, an empty and an odd span."""
    name, weight32 = head
    dtype = DTYPES[dtype_name]
    if dtype == torch.float32 and name != "smollm2-135m":
        pytest.skip("float32 is checked at SmolLM2's size; large heads serve in bf16")
    weight = weight32.to(dtype)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    hidden = torch.randn(len(SPANS), 512, weight.shape[1], device=DEVICE, generator=g).to(dtype)  # (B, T, H)
    with torch.inference_mode():
        got = sparse_head_triton(hidden, SPANS, weight, None, SHIFT)
        want = sparse_head_ref(hidden, SPANS, weight, None, SHIFT)
        auto = kernels.sparse_head(hidden, SPANS, weight, SHIFT)
    _assert_sparse_close(got, want, dtype)
    assert torch.equal(auto, got), "auto on CUDA must run the fused head"
    assert torch.count_nonzero(got[2]) == 0
    assert torch.count_nonzero(got[0]) > 0


def test_fused_sparse_head_peak_memory_is_below_one_texts_logits(head: tuple[str, torch.Tensor]) -> None:
    """The fused head never holds logits: its peak stays far below one 512-position text's float32
    logits, which the materialised definition allocates (and more)."""
    _, weight32 = head
    weight = weight32.to(torch.bfloat16)
    V, H = weight.shape
    hidden = torch.randn(8, 512, H, device=DEVICE).to(torch.bfloat16)
    spans = [(0, 512)] * 8
    logits_bytes = 512 * V * 4
    with torch.inference_mode():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        sparse_head_triton(hidden, spans, weight, None, SHIFT)
        torch.cuda.synchronize()
        fused = torch.cuda.max_memory_allocated() - base
    assert fused < logits_bytes / 4, f"fused peak {fused / 2**20:.1f} MiB vs {logits_bytes / 2**20:.1f} MiB of logits"


def test_streamed_head_equals_materialised_on_cuda() -> None:
    """The streamed PyTorch path (the fallback without triton) gives the definition's bits on CUDA too."""
    V, H = HEADS["smollm2-135m"]
    g = torch.Generator(device=DEVICE).manual_seed(2)
    weight = (torch.randn(V, H, device=DEVICE, generator=g) / H**0.5).to(torch.bfloat16)
    hidden = torch.randn(len(SPANS), 512, H, device=DEVICE, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(
            sparse_head_streamed(hidden, SPANS, weight, None, SHIFT),
            sparse_head_ref(hidden, SPANS, weight, None, SHIFT),
        )


# (B, T, H, dimensions): SmolLM2's width, Llama 3 8B's with a Matryoshka cut, Qwen2.5 7B's, a long text.
EMBED_SHAPES: list[tuple[int, int, int, int | None]] = [
    (64, 512, 576, None),
    (32, 512, 4096, 1024),
    (16, 512, 3584, 256),
    (4, 4096, 4096, None),
]


@pytest.mark.parametrize("out", ["float32", "int8", "binary"])
@pytest.mark.parametrize("mode", ["mean", "last"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", EMBED_SHAPES, ids=lambda s: "x".join(str(d) for d in s if d))
def test_pool_embed_at_real_widths(
    shape: tuple[int, int, int, int | None], dtype_name: str, mode: str, out: str
) -> None:
    """One pass gives the definition's floats, and exactly embed/output.py's bytes for those floats."""
    B, T, H, dims = shape
    g = torch.Generator(device=DEVICE).manual_seed(3)
    hidden = torch.randn(B, T, H, device=DEVICE, generator=g).to(DTYPES[dtype_name])
    lengths = torch.randint(1, T + 1, (B,), device=DEVICE, generator=g)
    kw: dict = {"dimensions": dims, "normalize": True, "dtype": out}
    if mode == "mean":
        kw["weights"] = (torch.arange(T, device=DEVICE)[None, :] < lengths[:, None]).float()
        kw["weights"][B // 2] = 0.0  # an empty row
    else:
        kw["last"] = lengths - 1
    got, floats = pool_embed_triton(hidden, also_float=True, **kw)
    want_floats = pool_embed_ref(hidden, **{**kw, "dtype": "float32"})
    torch.testing.assert_close(floats, want_floats, atol=1e-5, rtol=1e-4)
    if out != "float32":
        assert got.cpu().numpy().tobytes() == pack(floats.cpu().numpy(), out).data
        assert (got == pool_embed_ref(hidden, **kw)).float().mean() >= 0.99
    auto = kernels.pool_embed(hidden, **kw)  # the dispatcher's launch (no float copy): the same arithmetic
    assert auto.dtype == got.dtype and (auto == got).float().mean() >= 0.999
