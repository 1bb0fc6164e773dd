"""What speculative decoding costs on a GPU: the verification forward's time by tree size.

    python bench/gpu/specdec.py [--models smollm2-135m,llama3.2-1b] [--prefix 512] [--out FILE]

Speculative decoding pays one forward over a draft tree per step and gains the tokens the model
accepts. How many it accepts depends on the model and the text, not the device (greedy decoding is
the same computation), and was measured on CPU with the real model (bench/results/specdec_*.json:
mean_accepted_tokens). What the device decides is the price of a tree: a forward of n new tokens on
top of a KV cache, relative to one token. On a CPU that ratio grows quickly; on a GPU a decoder step
is bound by reading the weights, so trees of tens of tokens should cost little more than one.

This times forwards of 1..64 new tokens over a `--prefix`-token cache (a chain mask, as
generate/costmodel.measure builds, but waiting for the GPU around each forward), in bf16, and
projects the speedup of each CPU-measured workload as accepted tokens x t(1) / t(tree), with the
tree at the drafter's node budget: a projection, marked as such, not a measured end-to-end speedup.
bench/gpu/run.sh runs the measured one (bench/specdec/run.py) when LODESTAR_MODEL names real weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpucommon import ROOT, cuda_seconds, environment, load, release, require_device, write_json  # noqa: E402

SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def cost_curve(backbone: Any, prefix: int, sizes: tuple[int, ...] = SIZES) -> dict[int, float]:
    """Median seconds of a forward of n new tokens over a `prefix`-token cache, for each n."""
    from lodestar.backbone.compat import cache_kwargs, output_cache
    from lodestar.generate.kvcache import full_cache, tree_mask

    model, dev = backbone.model, backbone.device
    vocab = int(model.config.vocab_size)
    gen = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(0, vocab, (1, prefix), device=dev, generator=gen)  # (1, P)
    out: dict[int, float] = {}
    with torch.inference_mode():
        cache = output_cache(model(input_ids=ids, **cache_kwargs(model, full_cache()), use_cache=True))
        for n in sizes:
            x = torch.randint(0, vocab, (1, n), device=dev, generator=gen)  # (1, n)
            pos = torch.arange(prefix, prefix + n, device=dev)[None]  # (1, n)
            allowed = torch.ones(1, 1, n, prefix + n, dtype=torch.bool, device=dev)  # (1, 1, n, P + n): a chain
            allowed[0, 0, :, prefix:] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            mask = tree_mask(allowed, pos[0], model.config, backbone.dtype)

            def step(x: torch.Tensor = x, pos: torch.Tensor = pos, mask: Any = mask, n: int = n) -> None:
                model(input_ids=x, attention_mask=mask, position_ids=pos, **cache_kwargs(model, cache), use_cache=True)
                cache.crop(-n)

            out[n] = cuda_seconds(step, warmup=3, repeat=15)
    return out


def projections(curve: dict[int, float]) -> dict[str, Any]:
    """Projected speedup per CPU-measured workload: accepted tokens per step x t(1) / t(tree)."""
    rows: dict[str, Any] = {}
    for path in sorted((ROOT / "bench/results").glob("specdec_*.json")):
        cpu = json.loads(path.read_text())
        tree = int(cpu.get("draft_config", {}).get("max_nodes", 31)) + 1  # the drafted nodes plus the root
        size = min((s for s in curve if s >= tree), default=max(curve))
        accepted = float(cpu["mean_accepted_tokens"])
        rows[cpu.get("workload", path.stem)] = {
            "source": f"bench/results/{path.name} ({cpu.get('device')}, {cpu.get('model')})",
            "cpu_speedup_measured": cpu.get("speedup"),
            "accepted_tokens_per_step": accepted,
            "tree_tokens": size,
            "projected_speedup": round(
                accepted * curve[1] / curve[size], 2
            ),  # trees at the full budget: a low estimate
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,llama3.2-1b")
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu/specdec.json")
    args = ap.parse_args(argv)
    require_device(ap)
    report: dict[str, Any] = {"env": environment(), "prefix_tokens": args.prefix, "dtype": "bfloat16", "models": {}}
    for name in args.models.split(","):
        backbone, weights = load(name)
        curve = cost_curve(backbone, args.prefix)
        relative = {n: round(t / curve[1], 3) for n, t in curve.items()}
        report["models"][name] = {
            "weights": weights,
            "forward_ms": {n: round(t * 1e3, 3) for n, t in curve.items()},
            "relative_cost": relative,
            "projected": projections(curve),
        }
        print(name, relative, flush=True)
        del backbone
        release()
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
