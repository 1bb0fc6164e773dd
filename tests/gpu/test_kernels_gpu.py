"""CUDA tests for lodestar.kernels: compiled Triton kernels against the PyTorch references."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

triton = pytest.importorskip("triton")

import lodestar.kernels as kernels  # noqa: E402
from lodestar.kernels.reference import l2_normalize_ref, masked_mean_pool_ref  # noqa: E402
from lodestar.kernels.triton_pooling import l2_normalize_triton, masked_mean_pool_triton  # noqa: E402

DEVICE = "cuda"
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Both paths upcast to float32 first, so they differ only by fp32 summation order. The
# reference's reductions on CUDA use a different order than the kernel's, and long T sums
# more terms, hence slightly looser bounds than the CPU interpreter tests.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {  # dtype -> (atol, rtol)
    torch.float32: (2e-5, 2e-5),
    torch.float16: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 1e-4),
}

# (B, T, H): odd tails, B=1, T=1, and production-sized shapes.
POOL_SHAPES: list[tuple[int, int, int]] = [
    (3, 37, 200),
    (1, 5, 33),
    (2, 1, 9),
    (64, 512, 576),
    (8, 1000, 4096),
]
NORM_SHAPES: list[tuple[int, int]] = [(5, 300), (1, 2100), (256, 4096), (64, 576)]
VARIANTS: list[str] = ["basic", "zero_row", "transposed", "sliced", "bool", "int64", "soft", "nan_padding"]


def _pool_inputs(B: int, T: int, H: int, dtype: torch.dtype, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Build CUDA (hidden (B,T,H), weights (B,T)) in the requested layout/weight flavour."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    if variant == "transposed":
        hidden = torch.randn(B, H, T, device=DEVICE, generator=g).to(dtype).transpose(1, 2)  # (B, T, H)
    elif variant == "sliced":
        hidden = torch.randn(B, 2 * T, H + 3, device=DEVICE, generator=g).to(dtype)[:, ::2, 1 : H + 1]
    else:
        hidden = torch.randn(B, T, H, device=DEVICE, generator=g).to(dtype)  # (B, T, H)
    lengths = torch.randint(1, T + 1, (B,), device=DEVICE, generator=g)  # (B,)
    mask = torch.arange(T, device=DEVICE)[None, :] < lengths[:, None]  # (B, T) bool
    if variant == "bool":
        weights: torch.Tensor = mask
    elif variant == "int64":
        weights = mask.to(torch.int64)
    elif variant == "soft":
        weights = torch.rand(B, T, device=DEVICE, generator=g) * mask
    elif variant == "sliced":
        wide = torch.zeros(B, 2 * T, device=DEVICE)
        wide[:, ::2] = mask.float()
        weights = wide[:, ::2]  # (B, T) non-contiguous
    else:
        weights = mask.float()
    if variant == "zero_row":
        weights[B // 2] = 0.0
    if variant == "nan_padding":
        hidden = hidden.masked_fill(~mask[:, :, None], float("nan"))
    return hidden, weights


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pool_matches_reference(shape: tuple[int, int, int], dtype_name: str, variant: str) -> None:
    """The compiled pool kernel matches the reference across shapes, dtypes and layouts."""
    dtype = DTYPES[dtype_name]
    hidden, weights = _pool_inputs(*shape, dtype, variant)
    got = masked_mean_pool_triton(hidden, weights)
    want = masked_mean_pool_ref(hidden, weights)
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[2]) and got.is_cuda
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    if variant == "zero_row":
        assert torch.count_nonzero(got[shape[0] // 2]) == 0
    if variant == "nan_padding":
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("blocks", [(16, 64), (8, 32), (64, 256)])
def test_pool_explicit_tiles(blocks: tuple[int, int]) -> None:
    """Non-default tile sizes give the same answer (tails on both T and H)."""
    hidden, weights = _pool_inputs(4, 101, 333, torch.bfloat16, "soft")
    got = masked_mean_pool_triton(hidden, weights, block_t=blocks[0], block_h=blocks[1])
    torch.testing.assert_close(got, masked_mean_pool_ref(hidden, weights), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["basic", "zero_row", "transposed"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_normalize_matches_reference(shape: tuple[int, int], dtype_name: str, variant: str) -> None:
    """The compiled normalize kernel matches the reference across shapes, dtypes and layouts."""
    dtype = DTYPES[dtype_name]
    B, H = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    if variant == "transposed":
        x = torch.randn(H, B, device=DEVICE, generator=g).to(dtype).t()  # (B, H) non-contiguous
    else:
        x = torch.randn(B, H, device=DEVICE, generator=g).to(dtype)  # (B, H)
    if variant == "zero_row":
        x[B // 2] = 0.0
    got = l2_normalize_triton(x)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, l2_normalize_ref(x), atol=atol, rtol=rtol)
    if variant == "zero_row":
        assert torch.count_nonzero(got[B // 2]) == 0


def test_auto_dispatch_uses_triton_on_cuda() -> None:
    """On CUDA, auto resolves to triton and the public functions match the references."""
    hidden, weights = _pool_inputs(16, 128, 576, torch.bfloat16, "basic")
    assert "triton" in kernels.available_backends()
    assert kernels.resolve_backend("auto", hidden) == "triton"
    pooled = kernels.masked_mean_pool(hidden, weights)
    torch.testing.assert_close(pooled, masked_mean_pool_ref(hidden, weights), atol=1e-4, rtol=1e-4)
    normed = kernels.l2_normalize(pooled)
    torch.testing.assert_close(normed, l2_normalize_ref(pooled), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernels.l2_normalize(pooled, backend="torch"), normed, atol=1e-5, rtol=1e-5)


def test_auto_falls_back_when_grad_needed() -> None:
    """Auto uses torch when autograd is required (the kernels have no backward); forced triton refuses."""
    hidden = torch.randn(2, 7, 32, device=DEVICE, requires_grad=True)
    weights = torch.ones(2, 7, device=DEVICE)
    assert kernels.resolve_backend("auto", hidden) == "torch"
    kernels.masked_mean_pool(hidden, weights).sum().backward()
    assert hidden.grad is not None
    with pytest.raises(ValueError, match="backward"):
        kernels.masked_mean_pool(hidden, weights, backend="triton")
