"""Dense search on each collection backend over the same vectors: FAISS in this process (what the
embedded backend searches) and Milvus over gRPC (what the milvus backend searches), one query per
call as a service sees them. Reports QPS, p50/p99 latency and recall@k against exact search, per
index type mapped as the milvus backend maps it (retrieve/backends/milvus_schema.py).

Milvus Lite (the default here: its own server process on loopback) is a single-process stand-in for
Milvus: its figures include the gRPC hop and the client, not a cluster's fan-out to query nodes or its
segment layout (docs/scaling.md says what they do and do not predict).
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.bench.retrieval import embedding_like, recall
from lodestar.retrieve.backends.milvus_schema import dense_index
from lodestar.retrieve.dense import DenseIndex

SPECS = ("Flat", "HNSW32", "IVF256,Flat")
INSERT_BATCH = 2000


def _summary(latencies: list[float], found: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    lat = np.asarray(latencies)
    return {
        "qps": round(len(lat) / float(lat.sum()), 1),
        "p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
        "p99_ms": round(1000 * float(np.percentile(lat, 99)), 3),
        "recall@10": round(recall(found, truth), 4),
    }


def _faiss(spec: str, base: np.ndarray, q: np.ndarray, k: int, truth: np.ndarray) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    index = DenseIndex(base.shape[1], spec, "cosine", train_size=min(len(base), 100_000))
    index.add(np.arange(len(base), dtype=np.int64), base)
    build_s = time.perf_counter() - t0
    latencies, found = [], []
    for row in q:
        t = time.perf_counter()
        _, ids = index.search(row[None, :], k)
        latencies.append(time.perf_counter() - t)
        found.append(ids[0])
    return {
        "backend": "faiss",
        "index": spec,
        "build_s": round(build_s, 2),
        **_summary(latencies, np.array(found), truth),
    }


def _milvus(client: Any, spec: str, base: np.ndarray, q: np.ndarray, k: int, truth: np.ndarray) -> dict[str, Any]:
    from pymilvus import DataType

    name = f"bench_{secrets.token_hex(6)}"
    mapped = dense_index(spec)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=base.shape[1])
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type=mapped.index_type, metric_type="COSINE", params=mapped.params)
    t0 = time.perf_counter()
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    try:
        for i in range(0, len(base), INSERT_BATCH):
            rows = [{"pk": i + j, "vector": v.tolist()} for j, v in enumerate(base[i : i + INSERT_BATCH])]
            client.insert(name, rows)
        client.flush(name)
        client.load_collection(name)
        params = mapped.search_params("cosine", k)
        client.search(name, data=[q[0].tolist()], anns_field="vector", limit=k, search_params=params)  # warm
        build_s = time.perf_counter() - t0
        latencies, found = [], []
        for row in q:
            t = time.perf_counter()
            hits = client.search(name, data=[row.tolist()], anns_field="vector", limit=k, search_params=params)[0]
            latencies.append(time.perf_counter() - t)
            found.append([h.get("pk", h.get("id")) for h in hits])
        return {
            "backend": "milvus",
            "index": spec,
            "milvus_index": mapped.index_type,
            "build_s": round(build_s, 2),
            **_summary(latencies, np.array(found), truth),
        }
    finally:
        client.drop_collection(name)


def bench_backends(
    n: int = 20_000,
    dim: int = 128,
    queries: int = 300,
    k: int = 10,
    specs: tuple[str, ...] = SPECS,
    milvus_uri: str = "",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Per index spec, FAISS then Milvus over the same synthetic embedding-like vectors; milvus_uri
    "" = a Milvus Lite server process of its own (bench/milvus_lite.py)."""
    from pymilvus import MilvusClient

    from lodestar.bench.milvus_lite import MilvusLiteServer

    base = embedding_like(n, dim, np.random.default_rng(seed))
    q = embedding_like(queries, dim, np.random.default_rng(seed + 1))
    truth = np.argsort(-(q @ base.T), axis=1)[:, :k]  # (Q, k) exact cosine neighbours (unit vectors)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        uri = milvus_uri
        if not uri:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lodestar-milvus-")))
            uri = stack.enter_context(MilvusLiteServer(folder / "data")).uri
        client = MilvusClient(uri=uri)
        stack.callback(client.close)
        for spec in specs:
            for row in (_faiss(spec, base, q, k, truth), _milvus(client, spec, base, q, k, truth)):
                rows.append(row)
                if progress:
                    print(
                        f"{row['backend']:7} {spec:12} qps={row['qps']:>9,.1f} p50={row['p50_ms']:.3f} ms "
                        f"p99={row['p99_ms']:.3f} ms recall@10={row['recall@10']:.4f}",
                        flush=True,
                    )
    return {
        "vectors": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "queries_per_call": 1,
        "milvus": milvus_uri or "Milvus Lite server process on loopback (milvus-lite, pure Python)",
        "data": "synthetic embedding-like (bench/retrieval.py embedding_like)",
        "results": rows,
    }
