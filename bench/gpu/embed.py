"""Embedding throughput per mode on a GPU at bf16, and where a forward's GPU time goes.

    python bench/gpu/embed.py [--models smollm2-135m,llama3.2-1b] [--texts 1024] [--out FILE]

For each decoder shape (gpucommon.MODELS; real weights when LODESTAR_MODEL names them) and each
pooling mode, EmbeddingEngine.embed_direct embeds the same texts in length-sorted batches of
`--batch`: texts/s and tokens/s, the result on the host (what the engine hands a servicer). The
learned-sparse output (echo + sparse) is timed twice: through the fused Triton head (auto on CUDA)
and through the PyTorch path (backend="torch"), which is the comparison the kernel exists for.
Then one batch per kind of forward runs under torch's profiler, and the CUDA kernels that took the
most time are recorded: the list a next kernel should be chosen from.
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpucommon import DEVICE, ROOT, cuda_seconds, environment, load, release, require_device, sync, write_json  # noqa: E402

MODES = ("mean", "last", "prompteol", "echo", "token_prepend", "bidirectional")


def texts(n: int, seed: int = 0) -> list[str]:
    """n texts of 8 to 300 words drawn from this repository's README, lengths skewed short like queries and chunks."""
    words = re.findall(r"[A-Za-z][a-z]+", (ROOT / "README.md").read_text()) or ["lodestar"]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=min(300, 8 + int(rng.expovariate(1 / 60))))) for _ in range(n)]


def run_mode(engine: Any, batch: list[str], options: Any, size: int) -> dict[str, Any]:
    """Throughput of one mode over `batch` (sorted by length, as the batcher would group them)."""
    ordered = sorted(batch, key=len)
    engine.embed_direct(ordered[: 2 * size], options, batch_size=size)  # warm-up: kernels compile, allocator grows
    result: dict[str, Any] = {}

    def once() -> None:
        result["r"] = engine.embed_direct(ordered, options, batch_size=size)

    seconds = cuda_seconds(once, warmup=0, repeat=3)
    tokens = sum(result["r"].token_counts)
    return {
        "texts_per_s": round(len(batch) / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "seconds": round(seconds, 3),
    }


def top_kernels(engine: Any, batch: list[str], options: Any, size: int, top: int = 15) -> list[dict[str, Any]]:
    """The CUDA kernels that took the most time over one embed_direct call, with their share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        engine.embed_direct(batch, options, batch_size=size)
        sync()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0 and e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [
        {
            "kernel": e.key[:160],
            "ms": round(e.self_device_time_total / 1e3, 3),
            "share": round(e.self_device_time_total / total, 4),
            "calls": e.count,
        }
        for e in events[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,llama3.2-1b")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64, help="texts per forward")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu/embed.json")
    args = ap.parse_args(argv)
    require_device(ap)

    import lodestar.embed.forward as forward
    from lodestar.embed.engine import EmbeddingEngine, EngineConfig
    from lodestar.embedding import EmbedOptions

    batch = texts(args.texts)
    report: dict[str, Any] = {
        "env": environment(),
        "texts": len(batch),
        "batch": args.batch,
        "dtype": "bfloat16",
        "models": {},
    }
    for name in args.models.split(","):
        backbone, weights = load(name)
        engine = EmbeddingEngine(backbone, EngineConfig(max_texts_per_request=len(batch), max_batch_tokens=1 << 20))
        rows: dict[str, Any] = {}
        for mode in MODES:
            rows[mode] = run_mode(engine, batch, EmbedOptions(mode=mode), args.batch)
            print(name, mode, rows[mode], flush=True)
        sparse = EmbedOptions(mode="echo", sparse=True)
        rows["echo+sparse (triton)"] = run_mode(engine, batch, sparse, args.batch)
        fused = forward.sparse_head
        forward.sparse_head = functools.partial(fused, backend="torch")  # the PyTorch path, for comparison
        try:
            rows["echo+sparse (torch)"] = run_mode(engine, batch, sparse, args.batch)
        finally:
            forward.sparse_head = fused
        print(name, "sparse", rows["echo+sparse (triton)"], rows["echo+sparse (torch)"], flush=True)
        sample = sorted(batch, key=len)[-args.batch :]  # the longest texts: the forward at its heaviest
        profiles = {
            "mean": top_kernels(engine, sample, EmbedOptions(mode="mean"), args.batch),
            "echo+sparse": top_kernels(engine, sample, sparse, args.batch),
        }
        report["models"][name] = {"weights": weights, "modes": rows, "profile_longest_batch": profiles}
        engine.close()
        del engine, backbone
        release()
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
