"""FAISS search on the GPU against the CPU, through Lodestar's DenseIndex (LODESTAR_DEVICE's switch).

    python bench/gpu/faiss_search.py [--n 100000] [--dim 576] [--out FILE]

The same embedding-like vectors (bench/retrieval.py's) go into a Flat and an IVF index built with
use_gpu("cuda"), LODESTAR_DEVICE=cuda's switch; each index is searched with its GPU copy held off
(the CPU path every index has) and then on (trained once, on the CPU, either way). Queries arrive in calls of 1, 16 and 256, as a service receives them; reported
are QPS per call size and how many of the CPU's top 10 the GPU returns. Without a FAISS built with
GPU support (faiss-gpu) the GPU side is recorded as unavailable and the CPU side is still measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpucommon import ROOT, environment, write_json  # noqa: E402

from lodestar.bench.retrieval import _timed_search, embedding_like, recall  # noqa: E402
from lodestar.retrieve import faiss_runtime  # noqa: E402
from lodestar.retrieve.dense import DenseIndex  # noqa: E402
from lodestar.retrieve.faiss_runtime import use_gpu  # noqa: E402

SPECS = ("Flat", "IVF1024,Flat")
CALL_SIZES = (1, 16, 256)


def build(spec: str, x: np.ndarray) -> tuple[DenseIndex, float]:
    """A cosine DenseIndex over x; (index, seconds to build and train)."""
    start = time.perf_counter()
    index = DenseIndex(x.shape[1], spec, "cosine")
    index.add(np.arange(len(x)), x)
    return index, time.perf_counter() - start


def measure(index: DenseIndex, q: np.ndarray) -> dict[str, Any]:
    """QPS per call size (best of 3 passes), and the top 10 of the largest calls."""
    out: dict[str, Any] = {}
    found = np.empty(0)
    for size in CALL_SIZES:
        sub = q[: max(size * 8, 64)] if size > 1 else q[:200]
        found, seconds = _timed_search(index, sub, 10, size)
        out[f"qps_{size}"] = round(len(sub) / seconds, 1)
    out["_top10"] = found
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu/faiss.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = embedding_like(args.n, args.dim, rng)
    q = embedding_like(2048, args.dim, rng)
    gpus = faiss_runtime.gpu_count()
    report: dict[str, Any] = {"env": environment(), "n": args.n, "dim": args.dim, "faiss_gpus": gpus, "results": {}}
    if gpus == 0:
        report["gpu_unavailable"] = "this FAISS has no GPU support (faiss-cpu, or faiss-gpu without a CUDA device)"
    use_gpu("cuda")
    for spec in SPECS:
        index, built = build(spec, x)
        gpu_ok = index._gpu_ok  # the switch's verdict for this index
        index._gpu_ok = False  # the CPU path first (private: a benchmark's view of both sides)
        row: dict[str, Any] = {"build_s": round(built, 2), "cpu": measure(index, q)}
        if gpu_ok:
            index._gpu_ok = True
            row["gpu"] = measure(index, q)
            row["gpu"]["agreement_at_10"] = round(recall(row["gpu"]["_top10"], row["cpu"]["_top10"]), 4)
            row["gpu"]["on_gpu"] = index._gpu is not None
        for side in ("cpu", "gpu"):
            row.get(side, {}).pop("_top10", None)
        report["results"][spec] = row
        print(spec, row, flush=True)
        del index
    use_gpu("cpu")
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
