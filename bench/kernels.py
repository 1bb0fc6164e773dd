"""Benchmark the embedding hot-path kernels: PyTorch reference vs Triton.

Usage: python bench/kernels.py [--device cuda|cpu] [--out bench/results/kernels_<device>.json]

On CUDA both backends are timed; on CPU only the reference is (the Triton interpreter is a
correctness tool, not a speed path), so triton_ms and speedup are null there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lodestar.kernels.reference import l2_normalize_ref, masked_mean_pool_ref

DEFAULT_POOL_SHAPES = "64x512x576,256x512x4096"  # (B, T, H)
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shapes(spec: str) -> list[tuple[int, int, int]]:
    """Parse 'BxTxH,BxTxH' into shape tuples."""
    shapes = []
    for item in spec.split(","):
        dims = tuple(int(d) for d in item.lower().split("x"))
        if len(dims) != 3:
            raise argparse.ArgumentTypeError(f"shape {item!r} must be BxTxH")
        shapes.append(dims)
    return shapes


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> float:
    """Median wall time of fn in milliseconds, with warmup and proper device synchronisation."""
    for _ in range(warmup):  # compile / autotune / allocator warmup
        fn()
    samples: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def make_inputs(
    shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, padded: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden (B, T, H) and weights (B, T): all ones, or right-padded to random lengths."""
    B, T, H = shape
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(B, T, H, device=device, dtype=dtype, generator=g)  # (B, T, H)
    if padded:
        lengths = torch.randint(1, T + 1, (B,), device=device, generator=g)  # (B,)
        weights = (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()  # (B, T)
    else:
        weights = torch.ones(B, T, device=device)  # (B, T)
    return hidden, weights


def record(
    op: str,
    shape: tuple[int, ...],
    dtype_name: str,
    ref_fn: Callable[[], torch.Tensor],
    tri_fn: Callable[[], torch.Tensor] | None,
    device: torch.device,
    warmup: int,
    repeat: int,
) -> dict[str, Any]:
    """Time one op/shape on both backends and return its JSON row (with a max-abs-diff sanity check)."""
    torch_ms = time_ms(ref_fn, device, warmup, repeat)
    triton_ms = speedup = max_abs_diff = None
    if tri_fn is not None:
        triton_ms = time_ms(tri_fn, device, warmup, repeat)
        speedup = torch_ms / triton_ms if triton_ms > 0 else None
        max_abs_diff = (tri_fn() - ref_fn()).abs().max().item()
    row = {
        "op": op,
        "shape": list(shape),
        "dtype": dtype_name,
        "torch_ms": round(torch_ms, 4),
        "triton_ms": None if triton_ms is None else round(triton_ms, 4),
        "speedup": None if speedup is None else round(speedup, 3),
        "max_abs_diff": max_abs_diff,
    }
    print(
        f"{op:17s} {'x'.join(map(str, shape)):>16s} {dtype_name:5s} torch {torch_ms:9.3f} ms"
        + ("" if triton_ms is None else f"  triton {triton_ms:9.3f} ms  speedup {speedup:6.2f}x")
    )
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cuda", "cpu"], default=default_device)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/kernels_<device>.json")
    parser.add_argument(
        "--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_POOL_SHAPES), help="BxTxH,BxTxH,..."
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--padded", action="store_true", help="right-pad rows to random lengths")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on cuda, 1 on cpu")
    parser.add_argument("--repeat", type=int, default=None, help="default: 50 on cuda, 3 on cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 1)
    repeat = args.repeat if args.repeat is not None else (50 if device.type == "cuda" else 3)
    out_path: Path = args.out or Path(__file__).resolve().parent / "results" / f"kernels_{device.type}.json"
    dtype = DTYPES[args.dtype]

    pool_tri = norm_tri = None
    triton_version = None
    if device.type == "cuda":
        import triton

        from lodestar.kernels.triton_pooling import l2_normalize_triton, masked_mean_pool_triton

        pool_tri, norm_tri, triton_version = masked_mean_pool_triton, l2_normalize_triton, triton.__version__

    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for shape in args.shapes:
            hidden, weights = make_inputs(shape, dtype, device, args.padded)
            results.append(
                record(
                    "masked_mean_pool",
                    shape,
                    args.dtype,
                    partial(masked_mean_pool_ref, hidden, weights),
                    None if pool_tri is None else partial(pool_tri, hidden, weights),
                    device,
                    warmup,
                    repeat,
                )
            )
            x = hidden[:, 0, :].contiguous()  # (B, H) a pooled-embedding-sized matrix
            results.append(
                record(
                    "l2_normalize",
                    (shape[0], shape[2]),
                    args.dtype,
                    partial(l2_normalize_ref, x),
                    None if norm_tri is None else partial(norm_tri, x),
                    device,
                    warmup,
                    repeat,
                )
            )
            del hidden, weights, x

    report = {
        "device": device.type,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"),
        "torch_version": torch.__version__,
        "triton_version": triton_version,
        "padded": args.padded,
        "warmup": warmup,
        "repeat": repeat,
        "results": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
