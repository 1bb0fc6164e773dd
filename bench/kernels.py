"""Benchmark the kernels against their PyTorch references: median time and peak memory per shape.

Usage: python bench/kernels.py [--device cuda|cpu] [--ops pool,normalize,pool_embed,sparse]
                               [--out bench/results/kernels_<device>.json]

Ops: masked mean pooling and L2 normalisation (`pool`, `normalize`), pool + normalise + quantise in
one pass (`pool_embed`), and the learned-sparse head (`sparse`) at real vocabularies and widths. On
CUDA the Triton kernel is timed beside each reference; on CPU only the PyTorch paths are (the Triton
interpreter is a correctness tool, not a speed path), so triton_ms is null there. For the sparse
head the PyTorch side has two rows' worth: the materialised definition (`torch_*`) and the streamed
path that holds one vocabulary tile at a time (`streamed_*`), which is what CPU serving runs.
Peak memory is what the call allocates beyond its inputs: the CUDA allocator's high-water mark, or
on CPU the allocation timeline of torch's profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lodestar.kernels.reference import l2_normalize_ref, masked_mean_pool_ref, pool_embed_ref
from lodestar.kernels.sparse import sparse_head_ref, sparse_head_streamed

DEFAULT_POOL_SHAPES = "64x512x576,256x512x4096"  # (B, T, H)
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPS = ("pool", "normalize", "pool_embed", "sparse")
# LM heads (V, H) of models people serve: the bundled SmolLM2-135M, Llama 3 8B, Qwen2.5 7B.
HEADS: dict[str, tuple[int, int]] = {
    "smollm2-135m": (49152, 576),
    "llama3-8b": (128256, 4096),
    "qwen2.5-7b": (152064, 3584),
}
# Sparse workloads: (texts, pooled positions per text): long texts mean-pooled, short last-token queries.
SPARSE_LOADS = {"cuda": [(8, 512), (64, 1)], "cpu": [(1, 512), (16, 1)]}
SPARSE_HEADS = {"cuda": list(HEADS), "cpu": ["smollm2-135m"]}
SHIFT = 4.0  # embed.types.SPARSE_SHIFT
POOL_EMBED_VARIANTS = [("mean", None, "int8"), ("mean", None, "binary"), ("last", 256, "float32")]


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


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes fn allocates at its peak beyond what was allocated before it (its result included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the CPU timeline has no newer home than this export
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        _, sizes = json.loads(Path(path).read_text())
    totals = [sum(s) for s in sizes]  # live bytes by category at each event
    return int(max(totals) - totals[0]) if totals else 0


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


def measure(
    op: str,
    shape: dict[str, Any],
    dtype_name: str,
    paths: Mapping[str, Callable[[], torch.Tensor] | None],
    device: torch.device,
    warmup: int,
    repeat: int,
    compare: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
) -> dict[str, Any]:
    """Time and peak-measure each path ('torch' first, then any of 'streamed', 'triton'); one JSON row."""
    row: dict[str, Any] = {"op": op, **shape, "dtype": dtype_name}
    for name, fn in paths.items():
        row[f"{name}_ms"] = None if fn is None else round(time_ms(fn, device, warmup, repeat), 4)
        row[f"{name}_peak_mib"] = None if fn is None else _mib(peak_memory_bytes(fn, device))
    ref, tri = paths["torch"], paths.get("triton")
    row["speedup"] = round(row["torch_ms"] / row["triton_ms"], 3) if tri is not None and row["triton_ms"] else None
    if tri is not None:
        assert ref is not None
        got, want = tri(), ref()
        row["max_abs_diff"] = compare(got, want) if compare else (got.float() - want.float()).abs().max().item()
    else:
        row["max_abs_diff"] = None
    print(
        f"{op:17s} {json.dumps(shape):42s} {dtype_name:5s} "
        + "  ".join(f"{n} {row[f'{n}_ms']} ms / {row[f'{n}_peak_mib']} MiB" for n, f in paths.items() if f)
    )
    return row


def parse_shapes(spec: str) -> list[tuple[int, int, int]]:
    """Parse 'BxTxH,BxTxH' into shape tuples."""
    shapes = []
    for item in spec.split(","):
        dims = tuple(int(d) for d in item.lower().split("x"))
        if len(dims) != 3:
            raise argparse.ArgumentTypeError(f"shape {item!r} must be BxTxH")
        shapes.append(dims)
    return shapes


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


def _triton(name: str) -> Any:
    """The Triton kernel module `name` (CUDA runs only)."""
    import importlib

    return importlib.import_module(f"lodestar.kernels.{name}")


def bench_pooling(args: argparse.Namespace, device: torch.device, cuda: bool) -> list[dict[str, Any]]:
    """Masked mean pooling, L2 normalisation and the one-pass pool+normalise+quantise per (B, T, H)."""
    rows = []
    dtype = DTYPES[args.dtype]
    for shape in args.shapes:
        hidden, weights = make_inputs(shape, dtype, device, args.padded)
        B, T, H = shape
        dims = {"shape": list(shape)}
        if "pool" in args.ops:
            tri = partial(_triton("triton_pooling").masked_mean_pool_triton, hidden, weights) if cuda else None
            paths = {"torch": partial(masked_mean_pool_ref, hidden, weights), "triton": tri}
            rows.append(measure("masked_mean_pool", dims, args.dtype, paths, device, args.warmup, args.repeat))
        if "normalize" in args.ops:
            x = hidden[:, 0, :].contiguous()  # (B, H) a pooled-embedding-sized matrix
            tri = partial(_triton("triton_pooling").l2_normalize_triton, x) if cuda else None
            paths = {"torch": partial(l2_normalize_ref, x), "triton": tri}
            rows.append(measure("l2_normalize", {"shape": [B, H]}, args.dtype, paths, device, args.warmup, args.repeat))
        if "pool_embed" in args.ops:
            last = torch.full((B,), T - 1, device=device, dtype=torch.long)
            for mode, d, out in POOL_EMBED_VARIANTS:
                kw: dict[str, Any] = {"weights": weights} if mode == "mean" else {"last": last}
                kw.update(dimensions=min(d, H) if d else None, normalize=True, dtype=out)
                tri = partial(_triton("triton_embed").pool_embed_triton, hidden, **kw) if cuda else None
                paths = {"torch": partial(pool_embed_ref, hidden, **kw), "triton": tri}
                meta = {**dims, "mode": mode, "dimensions": kw["dimensions"] or H, "out": out}
                rows.append(
                    measure("pool_embed", meta, args.dtype, paths, device, args.warmup, args.repeat, _quant_diff)
                )
        del hidden, weights
    return rows


def _quant_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference of float rows; for int8 and packed-bit rows, how many output bytes differ."""
    if got.dtype in (torch.int8, torch.uint8):
        return float((got != want).sum())
    return (got.float() - want.float()).abs().max().item()


def bench_sparse(args: argparse.Namespace, device: torch.device, cuda: bool) -> list[dict[str, Any]]:
    """The learned-sparse head per LM head and workload: materialised, streamed, and fused (CUDA)."""
    rows = []
    dtype = DTYPES[args.dtype]
    g = torch.Generator(device=device).manual_seed(0)
    for head in args.heads:
        V, H = HEADS[head]
        weight = (torch.randn(V, H, device=device, generator=g) / H**0.5).to(dtype)  # (V, H)
        for texts, n in args.sparse_loads:
            hidden = torch.randn(texts, n, H, device=device, generator=g).to(dtype)  # (B, n, H)
            spans = [(0, n)] * texts
            paths: dict[str, Callable[[], torch.Tensor] | None] = {
                "torch": partial(sparse_head_ref, hidden, spans, weight, None, SHIFT),
                "streamed": partial(sparse_head_streamed, hidden, spans, weight, None, SHIFT),
                "triton": partial(_triton("triton_sparse").sparse_head_triton, hidden, spans, weight, None, SHIFT)
                if cuda
                else None,
            }
            meta = {"head": head, "vocab": V, "hidden": H, "texts": texts, "positions": n}
            with torch.inference_mode():
                rows.append(measure("sparse_head", meta, args.dtype, paths, device, args.warmup, args.repeat))
            del hidden
        del weight
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cuda", "cpu"], default=default_device)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/kernels_<device>.json")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument(
        "--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_POOL_SHAPES), help="BxTxH,BxTxH,..."
    )
    parser.add_argument("--heads", default=None, help=f"sparse: LM heads, of {', '.join(HEADS)}")
    parser.add_argument("--loads", default=None, help="sparse: TEXTSxPOSITIONS,... (default: by device)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--padded", action="store_true", help="right-pad rows to random lengths")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on cuda, 1 on cpu")
    parser.add_argument("--repeat", type=int, default=None, help="default: 50 on cuda, 3 on cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    args.ops = [o for o in args.ops.split(",") if o]
    unknown = set(args.ops) - set(OPS)
    if unknown:
        parser.error(f"unknown ops {sorted(unknown)}; valid are {', '.join(OPS)}")
    args.heads = args.heads.split(",") if args.heads else SPARSE_HEADS[device.type]
    if set(args.heads) - set(HEADS):
        parser.error(f"unknown heads {sorted(set(args.heads) - set(HEADS))}; valid are {', '.join(HEADS)}")
    loads = [tuple(int(x) for x in item.split("x")) for item in args.loads.split(",")] if args.loads else None
    args.sparse_loads = loads or SPARSE_LOADS[device.type]
    args.warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 1)
    args.repeat = args.repeat if args.repeat is not None else (50 if device.type == "cuda" else 3)
    out_path: Path = args.out or Path(__file__).resolve().parent / "results" / f"kernels_{device.type}.json"
    cuda = device.type == "cuda"
    triton_version = None
    if cuda:
        import triton

        triton_version = triton.__version__

    with torch.inference_mode():
        results = bench_pooling(args, device, cuda)
    if "sparse" in args.ops:
        results += bench_sparse(args, device, cuda)

    report = {
        "device": device.type,
        "device_name": (torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"),
        "torch_version": torch.__version__,
        "triton_version": triton_version,
        "threads": torch.get_num_threads(),
        "padded": args.padded,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "results": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
