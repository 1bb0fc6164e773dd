"""Unit tests for lodestar.kernels: references, dispatcher, and Triton kernels under the interpreter.

TRITON_INTERPRET must be set before triton builds its kernels, so the Triton checks run
once in a child process (this file executed as a script with TRITON_INTERPRET=1); each
case's verdict comes back as JSON and is asserted by its own parametrized test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import lodestar.kernels as kernels
from lodestar.kernels import dispatch
from lodestar.kernels.reference import l2_normalize_ref, masked_mean_pool_ref

# Both backends upcast to float32 before any arithmetic, so outputs differ only by fp32
# summation order, whatever the input dtype. 16-bit inputs get 10x headroom for their larger
# per-element magnitudes, still far below bf16 resolution (~4e-3): a kernel that accumulated
# in the input dtype would fail.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {  # dtype -> (atol, rtol)
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 1e-4),
}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESULT_MARKER = "KERNEL_CASE_RESULTS="


@dataclass(frozen=True)
class PoolCase:
    """One masked-mean-pool comparison: shape, dtype, input layout variant, optional tile sizes."""

    name: str
    B: int
    T: int
    H: int
    dtype: str
    variant: str = "basic"
    block_t: int | None = None
    block_h: int | None = None


@dataclass(frozen=True)
class NormCase:
    """One L2-normalize comparison: shape, dtype, input layout variant, optional tile size."""

    name: str
    B: int
    H: int
    dtype: str
    variant: str = "basic"
    block_h: int | None = None


POOL_CASES: list[PoolCase] = [
    # T and H deliberately not multiples of the tile, several tiles along both axes.
    PoolCase("pool_fp32_tails", 3, 37, 200, "fp32", block_t=16, block_h=64),
    PoolCase("pool_bf16_tails", 3, 37, 200, "bf16", block_t=16, block_h=64),
    PoolCase("pool_fp16_tails", 3, 37, 200, "fp16", block_t=16, block_h=64),
    PoolCase("pool_fp32_default_tiles", 2, 70, 300, "fp32"),
    PoolCase("pool_bf16_default_tiles", 2, 70, 300, "bf16"),
    PoolCase("pool_bf16_b1", 1, 5, 33, "bf16"),
    PoolCase("pool_fp32_t1", 2, 1, 9, "fp32"),
    PoolCase("pool_fp32_zero_row", 4, 19, 70, "fp32", "zero_row", block_t=8, block_h=32),
    PoolCase("pool_bf16_zero_row", 4, 19, 70, "bf16", "zero_row", block_t=8, block_h=32),
    PoolCase("pool_fp32_transposed", 3, 21, 45, "fp32", "transposed", block_t=8, block_h=16),
    PoolCase("pool_bf16_sliced", 3, 21, 45, "bf16", "sliced", block_t=8, block_h=16),
    PoolCase("pool_fp32_bool_weights", 3, 23, 40, "fp32", "bool_weights", block_t=8),
    PoolCase("pool_bf16_int64_weights", 3, 23, 40, "bf16", "int_weights", block_t=8),
    PoolCase("pool_fp32_soft_weights", 3, 23, 40, "fp32", "soft_weights", block_t=8),
    PoolCase("pool_fp32_nan_padding", 3, 23, 40, "fp32", "nan_padding", block_t=8),
]

NORM_CASES: list[NormCase] = [
    NormCase("norm_fp32_tails", 5, 300, "fp32", block_h=128),
    NormCase("norm_bf16_tails", 5, 300, "bf16", block_h=128),
    NormCase("norm_fp16_tails", 5, 300, "fp16", block_h=128),
    NormCase("norm_fp32_b1_default_tile", 1, 2100, "fp32"),
    NormCase("norm_fp32_zero_row", 4, 50, "fp32", "zero_row", block_h=16),
    NormCase("norm_bf16_transposed", 6, 77, "bf16", "transposed", block_h=32),
]

DISPATCH_CHECKS: list[str] = ["dispatch_auto_picks_triton_under_interpreter"]


def _make_pool_inputs(case: PoolCase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Build (hidden (B,T,H), weights (B,T)) for a pool case, with the layout its variant asks for."""
    g = torch.Generator().manual_seed(seed)
    B, T, H = case.B, case.T, case.H
    dtype = DTYPES[case.dtype]
    if case.variant == "transposed":
        hidden = torch.randn(B, H, T, generator=g).to(dtype).transpose(1, 2)  # (B, T, H), H-stride = T
    elif case.variant == "sliced":
        big = torch.randn(B, 2 * T, H + 3, generator=g).to(dtype)  # (B, 2T, H+3)
        hidden = big[:, ::2, 1 : H + 1]  # (B, T, H), every other token, offset columns
    else:
        hidden = torch.randn(B, T, H, generator=g).to(dtype)  # (B, T, H)

    lengths = torch.randint(1, T + 1, (B,), generator=g)  # (B,) at least one real token per row
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) bool, right-padded
    if case.variant == "sliced":
        wide = torch.zeros(B, 2 * T)
        wide[:, ::2] = mask.float()
        weights: torch.Tensor = wide[:, ::2]  # (B, T) non-contiguous
    elif case.variant == "bool_weights":
        weights = mask
    elif case.variant == "int_weights":
        weights = mask.to(torch.int64)  # tokenizer-style attention_mask
    elif case.variant == "soft_weights":
        weights = torch.rand(B, T, generator=g) * mask
    else:
        weights = mask.float()

    if case.variant == "zero_row":
        weights[B // 2] = 0.0
    if case.variant == "nan_padding":
        hidden = hidden.masked_fill(~mask[:, :, None], float("nan"))
    return hidden, weights


def _make_norm_input(case: NormCase, seed: int = 0) -> torch.Tensor:
    """Build x (B, H) for a normalize case, with the layout its variant asks for."""
    g = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case.dtype]
    if case.variant == "transposed":
        x = torch.randn(case.H, case.B, generator=g).to(dtype).t()  # (B, H), H-stride = B
    else:
        x = torch.randn(case.B, case.H, generator=g).to(dtype)  # (B, H)
    if case.variant == "zero_row":
        x[case.B // 2] = 0.0
    return x


def _check_pool_case(case: PoolCase) -> None:
    """Compare the Triton pool kernel with the reference for one case; raise AssertionError on mismatch."""
    from lodestar.kernels.triton_pooling import masked_mean_pool_triton

    hidden, weights = _make_pool_inputs(case)
    got = masked_mean_pool_triton(hidden, weights, block_t=case.block_t, block_h=case.block_h)
    want = masked_mean_pool_ref(hidden, weights)
    assert got.dtype == torch.float32 and got.shape == (case.B, case.H)
    atol, rtol = TOLERANCES[DTYPES[case.dtype]]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    if case.variant == "zero_row":
        assert torch.equal(got[case.B // 2], torch.zeros(case.H)), "all-zero weights must pool to zeros"
    if case.variant == "nan_padding":
        assert torch.isfinite(got).all(), "NaNs in zero-weight positions leaked into the output"


def _check_norm_case(case: NormCase) -> None:
    """Compare the Triton normalize kernel with the reference for one case; AssertionError on mismatch."""
    from lodestar.kernels.triton_pooling import l2_normalize_triton

    x = _make_norm_input(case)
    got = l2_normalize_triton(x, block_h=case.block_h)
    want = l2_normalize_ref(x)
    assert got.dtype == torch.float32 and got.shape == (case.B, case.H)
    atol, rtol = TOLERANCES[DTYPES[case.dtype]]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    if case.variant == "zero_row":
        assert torch.equal(got[case.B // 2], torch.zeros(case.H)), "a zero row must stay zero"


def _check_dispatch_under_interpreter() -> None:
    """With TRITON_INTERPRET=1, auto must route CPU tensors to triton and still match the reference."""
    hidden, weights = _make_pool_inputs(POOL_CASES[0])
    assert kernels.resolve_backend("auto", hidden) == "triton"
    assert "triton" in kernels.available_backends()
    pooled = kernels.masked_mean_pool(hidden, weights)
    torch.testing.assert_close(pooled, masked_mean_pool_ref(hidden, weights), atol=1e-5, rtol=1e-5)
    normed = kernels.l2_normalize(pooled, backend="triton")
    torch.testing.assert_close(normed, l2_normalize_ref(pooled), atol=1e-5, rtol=1e-5)


def run_checks(checks: list[tuple[str, Callable[[], None]]]) -> None:
    """Child side: run every check, print {name: "ok" | traceback} as JSON after RESULT_MARKER."""
    results: dict[str, str] = {}
    for name, check in checks:
        try:
            check()
            results[name] = "ok"
        except Exception:  # report every failure, not just the first
            results[name] = traceback.format_exc()
    print(RESULT_MARKER + json.dumps(results))


def _interpreter_main() -> None:
    """Child-process entry point: run every Triton case under the interpreter, print verdicts as JSON."""
    if not dispatch._interpret_requested():
        raise SystemExit("run this script with TRITON_INTERPRET=1")
    checks: list[tuple[str, Callable[[], None]]] = [(c.name, lambda c=c: _check_pool_case(c)) for c in POOL_CASES]
    checks += [(c.name, lambda c=c: _check_norm_case(c)) for c in NORM_CASES]
    checks.append((DISPATCH_CHECKS[0], _check_dispatch_under_interpreter))
    run_checks(checks)


def _run_child(code_or_script: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run python in a child with this process's import path, so it sees the same lodestar package."""
    env = {**os.environ, **extra_env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, *code_or_script], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def interpreter_results_of(script: str) -> dict[str, str]:
    """Parent side: run `script` under TRITON_INTERPRET=1 and return its {case name: "ok" | traceback}."""
    pytest.importorskip("triton")
    proc = _run_child([os.path.abspath(script)], {"TRITON_INTERPRET": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter child failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(RESULT_MARKER) :])


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str]:
    """Run all Triton-interpreter cases once in a child process and return {case name: "ok" | traceback}."""
    return interpreter_results_of(__file__)


# ---------------------------------------------------------------- triton kernels (interpreter)


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_triton_pool_matches_reference(interpreter_results: dict[str, str], case: PoolCase) -> None:
    """The Triton pool kernel matches the reference for every dtype/shape/layout case."""
    assert interpreter_results[case.name] == "ok", interpreter_results[case.name]


@pytest.mark.parametrize("case", NORM_CASES, ids=lambda c: c.name)
def test_triton_normalize_matches_reference(interpreter_results: dict[str, str], case: NormCase) -> None:
    """The Triton normalize kernel matches the reference for every dtype/shape/layout case."""
    assert interpreter_results[case.name] == "ok", interpreter_results[case.name]


@pytest.mark.parametrize("name", DISPATCH_CHECKS)
def test_dispatch_under_interpreter(interpreter_results: dict[str, str], name: str) -> None:
    """Under TRITON_INTERPRET=1 the dispatcher routes CPU tensors to Triton."""
    assert interpreter_results[name] == "ok", interpreter_results[name]


# ---------------------------------------------------------------- references


def test_pool_reference_matches_float64_loop() -> None:
    """The reference equals a direct float64 evaluation of sum_t w*h / max(sum_t w, eps)."""
    hidden, weights = _make_pool_inputs(PoolCase("x", 3, 11, 7, "bf16", "soft_weights"))
    h64, w64 = hidden.double(), weights.double()
    want = torch.stack([(w64[b, :, None] * h64[b]).sum(0) / max(w64[b].sum().item(), 1e-9) for b in range(3)])
    got = masked_mean_pool_ref(hidden, weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_pool_reference_zero_row_and_nan_padding() -> None:
    """All-zero weights give a zero row; NaNs at zero-weight positions are ignored."""
    hidden, weights = _make_pool_inputs(PoolCase("x", 4, 9, 5, "fp32", "nan_padding"))
    weights[1] = 0.0
    out = masked_mean_pool_ref(hidden, weights)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(5))


def test_normalize_reference_matches_functional() -> None:
    """The reference agrees with torch.nn.functional.normalize and keeps zero rows at zero."""
    x = _make_norm_input(NormCase("x", 4, 33, "bf16", "zero_row"))
    got = l2_normalize_ref(x)
    torch.testing.assert_close(got, F.normalize(x.float(), dim=1), atol=1e-6, rtol=1e-6)
    assert torch.equal(got[2], torch.zeros(33))


def test_reference_rejects_bad_shapes() -> None:
    """Shape mistakes fail loudly instead of broadcasting."""
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        masked_mean_pool_ref(torch.zeros(2, 3, 4), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\(B, T, H\)"):
        masked_mean_pool_ref(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        l2_normalize_ref(torch.zeros(2, 3, 4))


# ---------------------------------------------------------------- dispatcher (no triton needed)


def test_auto_uses_torch_on_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TRITON_INTERPRET, auto on CPU picks torch and never even imports the triton module."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def _forbidden() -> None:
        raise AssertionError("auto on CPU must not load triton")

    monkeypatch.setattr(dispatch, "_load_triton", _forbidden)
    hidden, weights = _make_pool_inputs(POOL_CASES[1])
    assert kernels.resolve_backend("auto", hidden) == "torch"
    pooled = kernels.masked_mean_pool(hidden, weights)
    torch.testing.assert_close(pooled, masked_mean_pool_ref(hidden, weights))
    x = _make_norm_input(NORM_CASES[0])
    torch.testing.assert_close(kernels.l2_normalize(x), l2_normalize_ref(x))
    torch.testing.assert_close(kernels.l2_normalize(x, backend="torch"), l2_normalize_ref(x))
    if not torch.cuda.is_available():
        assert kernels.available_backends() == ("torch",)


@pytest.mark.parametrize("call", ["pool", "normalize", "resolve"])
def test_unknown_backend_lists_valid_choices(call: str) -> None:
    """An unknown backend name is a ValueError naming every valid choice."""
    hidden, weights = torch.zeros(1, 2, 3), torch.ones(1, 2)
    with pytest.raises(ValueError) as info:
        if call == "pool":
            kernels.masked_mean_pool(hidden, weights, backend="cuda")
        elif call == "normalize":
            kernels.l2_normalize(hidden[:, 0], backend="cuda")
        else:
            kernels.resolve_backend("cuda", hidden)
    message = str(info.value)
    assert "'cuda'" in message
    for choice in ("auto", "torch", "triton"):
        assert repr(choice) in message


def test_forced_triton_on_cpu_without_interpreter_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend='triton' on a CPU tensor without TRITON_INTERPRET=1 says why it cannot run."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.masked_mean_pool(torch.zeros(1, 2, 3), torch.ones(1, 2), backend="triton")
    with pytest.raises(ValueError, match="CUDA"):
        kernels.l2_normalize(torch.zeros(1, 3), backend="triton")


def test_package_works_without_triton() -> None:
    """Without triton the package still imports, auto falls back to torch, triton_pooling raises ImportError."""
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` raise ImportError
import torch
import lodestar.kernels as k
assert k.available_backends() == ("torch",), k.available_backends()
h, w = torch.randn(2, 3, 4), torch.ones(2, 3)
assert k.resolve_backend("auto", h) == "torch"
assert k.masked_mean_pool(h, w).shape == (2, 4)
try:
    k.l2_normalize(h[:, 0], backend="triton")
except ValueError as e:
    assert "triton is not available" in str(e), e
else:
    raise AssertionError("forced triton without triton installed must raise")
try:
    import lodestar.kernels.triton_pooling
except ImportError as e:
    assert "needs the 'triton' package" in str(e), e
else:
    raise AssertionError("triton_pooling must raise ImportError without triton")
print("OK")
"""
    proc = _run_child(["-c", code], {"TRITON_INTERPRET": "1"})  # env set so the import is really attempted
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


if __name__ == "__main__":
    _interpreter_main()
