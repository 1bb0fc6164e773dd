"""Index benchmark: QPS and recall@10 against exact search for each FAISS index type.

Data: 100k random vectors drawn around 1,000 random centres (clustered, as real embeddings are;
uniform noise in high dimensions has no neighbours worth finding). Each index type is searched at a
few settings (HNSW efSearch, IVF nprobe); the cheapest setting that reaches the recall target is
reported beside the full sweep.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lodestar.retrieve.dense import DenseIndex

SPECS = ("Flat", "HNSW32", "IVF1024,Flat", "IVF1024,PQ32")
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "HNSW32": ("ef_search", (32, 64, 128, 256)),
    "IVF1024,Flat": ("nprobe", (8, 16, 32, 64)),
    "IVF1024,PQ32": ("nprobe", (8, 16, 32, 64)),
}


def clustered(n: int, dim: int, centres: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit vectors around `centres` random centres."""
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed_search(index: DenseIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, time.perf_counter() - start


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bench_indexes(
    n: int = 100_000, dim: int = 128, queries: int = 1000, k: int = 10, specs: tuple[str, ...] = SPECS,
    target: float = 0.95, seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    base = clustered(n, dim, 1000, rng)
    q = clustered(queries, dim, 1000, np.random.default_rng(seed + 1))
    ids = np.arange(n, dtype=np.int64)
    results: list[dict[str, Any]] = []
    truth: np.ndarray | None = None
    exact_qps = None
    for spec in specs:
        t0 = time.perf_counter()
        index = DenseIndex(dim, spec, "cosine", train_size=min(n, 100_000))
        index.add(ids, base)
        build_s = time.perf_counter() - t0
        knob, values = SWEEPS.get(spec, ("", (0,)))
        sweep = []
        for value in values:
            if knob:
                setattr(index, knob, value)
            found, secs = _timed_search(index, q, k)
            if truth is None:
                truth = found  # Flat runs first: exact neighbours
            qps = queries / secs
            if spec == "Flat":
                exact_qps = qps
            sweep.append({knob or "exact": value, "recall@10": round(recall(found, truth), 4), "qps": round(qps, 1)})
            if progress:
                print(f"{spec:14} {knob or 'exact'}={value:<4} recall@10={sweep[-1]['recall@10']:.4f} qps={qps:,.0f}", flush=True)
        ok = [s for s in sweep if s["recall@10"] >= target]
        best = max(ok, key=lambda s: s["qps"]) if ok else max(sweep, key=lambda s: s["recall@10"])
        results.append({
            "index": spec, "build_s": round(build_s, 2), "trained": index.trained, "sweep": sweep, "chosen": best,
            "speedup_vs_exact": round(best["qps"] / exact_qps, 2) if exact_qps else None,
            "meets_target": best["recall@10"] >= target and (spec == "Flat" or best["qps"] >= 5 * (exact_qps or 0)),
        })
    return {"vectors": n, "dim": dim, "queries": queries, "k": k, "data": "clustered random (1000 centres)",
            "target": {"recall@10": target, "speedup_vs_exact": 5}, "indexes": results}
