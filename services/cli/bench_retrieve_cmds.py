"""Commands of the retrieval benchmarks: bench retrieve (per index type, per backend), bench shards,
bench sparse; and the --backend / --milvus-uri options the retrieval evaluation shares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lodestar.services.cli.common import add_result_args, settings, write_result


def cmd_bench_retrieve(args: argparse.Namespace) -> int:
    if args.backend == "milvus":
        return _bench_backends(args)
    from lodestar.bench.retrieval import SPECS, bench_indexes

    result: dict[str, Any] = {
        "indexes": bench_indexes(
            n=args.vectors,
            dim=args.dim,
            queries=args.queries,
            batch=args.batch,
            threads=args.threads,
            specs=tuple(args.index) if args.index else SPECS,
            progress=not args.quiet,
        )
    }
    if args.corpus:
        from lodestar.bench.served import bench_search_latency
        from lodestar.retrieve.eval.beir import read_beir

        docs, queries, _ = read_beir(Path(args.corpus))
        result["grpc_latency"] = bench_search_latency(
            docs[: args.docs],
            list(queries.values())[: args.latency_queries],
            mode=args.mode or "token_prepend",
            model=args.model,
            progress=not args.quiet,
        )
        result["grpc_latency"]["corpus"] = str(args.corpus)
    write_result(result, args.out)
    return 0


def _bench_backends(args: argparse.Namespace) -> int:
    """--backend milvus: FAISS and Milvus side by side over the same vectors (bench/backends.py)."""
    from lodestar.bench.backends import SPECS, bench_backends

    options = milvus_args(args)
    result = bench_backends(
        n=args.vectors,
        dim=args.dim,
        queries=args.queries,
        specs=tuple(args.index) if args.index else SPECS,
        milvus_uri=args.milvus_uri or (options.uri if options is not None else ""),
        progress=not args.quiet,
    )
    write_result(result, args.out)
    return 0


def cmd_bench_shards(args: argparse.Namespace) -> int:
    from lodestar.bench.retrieval import bench_shards

    try:
        counts = tuple(int(x) for x in args.shards.split(","))
    except ValueError:
        raise SystemExit(f"--shards takes comma-separated shard counts; got {args.shards!r}") from None
    write_result(
        bench_shards(
            n=args.vectors,
            dim=args.dim,
            queries=args.queries,
            k=args.k,
            shards=counts,
            specs=tuple(args.index) if args.index else ("Flat", "HNSW32"),
            progress=not args.quiet,
        ),
        args.out,
    )
    return 0


def cmd_bench_sparse(args: argparse.Namespace) -> int:
    from lodestar.bench.retrieval import bench_impact

    try:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    except ValueError:
        raise SystemExit(f"--sizes takes comma-separated document counts; got {args.sizes!r}") from None
    if any(n < args.k for n in sizes):
        raise SystemExit(f"--sizes must each be at least k={args.k}; got {args.sizes!r}")
    write_result(
        bench_impact(
            sizes=sizes,
            doc_nnz=args.doc_nnz,
            query_nnz=args.query_nnz,
            queries=args.queries,
            k=args.k,
            progress=not args.quiet,
            idf=args.idf,
        ),
        args.out,
    )
    return 0


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="where the collection lives; bench retrieve: milvus = FAISS and Milvus side by side "
        "(QPS, p50/p99, recall@10; default indexes Flat, HNSW32, IVF256,Flat)",
    )
    p.add_argument(
        "--milvus-uri",
        help="backend milvus: http://host:19530 or a Milvus Lite .db path (default LODESTAR_MILVUS_URI, else a "
        "Milvus Lite of its own)",
    )


def milvus_args(args: argparse.Namespace) -> Any:
    """MilvusOptions from --milvus-uri or the LODESTAR_MILVUS_* settings; None = the command's own Milvus Lite."""
    from lodestar.retrieve.backends.milvus_store import MilvusOptions
    from lodestar.services.runtime import milvus_options

    if args.backend != "milvus":
        return None
    if args.milvus_uri:
        return MilvusOptions(uri=args.milvus_uri)
    return milvus_options(settings())


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands under groups["bench"]."""
    bn = groups["bench"]
    br = bn.add_parser("retrieve", help="QPS and recall@10 vs exact per index type; gRPC search latency")
    br.add_argument("--vectors", type=int, default=100_000)
    br.add_argument("--dim", type=int, default=128)
    br.add_argument("--queries", type=int, default=1000)
    br.add_argument("--batch", type=int, default=1, help="queries per search call (1: as a service receives them)")
    br.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads")
    br.add_argument(
        "--index",
        action="append",
        help="FAISS factory string, repeatable; Flat (exact) must come first "
        "(default: Flat, HNSW32, IVF1024,Flat, IVF4096,Flat, IVF1024,SQ8, IVF1024,PQ32)",
    )
    br.add_argument("--corpus", help="BEIR folder: also measure gRPC search latency on its documents and queries")
    br.add_argument("--docs", type=int, default=300, help="documents of --corpus to index for the latency part")
    br.add_argument("--latency-queries", type=int, default=200)
    br.add_argument("--mode")
    add_backend_args(br)
    add_result_args(br)
    br.set_defaults(func=cmd_bench_retrieve)

    bh = bn.add_parser("shards", help="single-query latency of one dense index vs N shards searched in parallel")
    bh.add_argument("--vectors", type=int, default=100_000)
    bh.add_argument("--dim", type=int, default=576, help="576: SmolLM2-135M's width")
    bh.add_argument("--queries", type=int, default=200)
    bh.add_argument("--k", type=int, default=10)
    bh.add_argument("--shards", default="1,2,4", help="shard counts, comma-separated (1 = the unsharded baseline)")
    bh.add_argument("--index", action="append", help="FAISS spec (repeatable; default Flat and HNSW32)")
    add_result_args(bh, model=False)
    bh.set_defaults(func=cmd_bench_shards)

    bs = bn.add_parser(
        "sparse", help="learned-sparse impact index latency (MaxScore, plain accumulation) vs exact CSR scoring"
    )
    bs.add_argument("--sizes", default="10000,100000,300000", help="documents per run, comma-separated")
    bs.add_argument("--doc-nnz", type=int, default=200, help="non-zeros per document (sparse-squad: about 200)")
    bs.add_argument("--query-nnz", type=int, default=40, help="non-zeros per query (sparse-squad: about 40)")
    bs.add_argument("--queries", type=int, default=200)
    bs.add_argument("--k", type=int, default=10)
    bs.add_argument(
        "--idf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale query weights by IDF, as collections do by default (query_idf)",
    )
    add_result_args(bs, model=False)
    bs.set_defaults(func=cmd_bench_sparse)
