"""Commands of the retrieval side: collection, doc, search, eval beir (the retrieval benchmarks are in
bench_retrieve_cmds.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.bench_retrieve_cmds import add_backend_args, milvus_args
from lodestar.services.cli.common import (
    connect,
    eval_engine,
    plain,
    print_obj,
)


def cmd_collection(args: argparse.Namespace) -> int:

    with connect(args) as c:
        if args.action == "create":
            config = {
                "mode": args.mode or "",
                "index": args.index or "",
                "sparse": args.sparse or "",
                "dense": args.dense or "",
                "metric": args.metric or "",
                "dimensions": args.dimensions,
                "adapter": args.adapter or "",
                "query_instruction": args.query_instruction or "",
                "doc_instruction": args.doc_instruction or "",
                "query_prompt": args.query_prompt or "",
                "doc_prompt": args.doc_prompt or "",
            }
            if args.chunk_tokens is not None:
                config["chunk_tokens"] = args.chunk_tokens
            if args.chunk_overlap is not None:
                config["chunk_overlap"] = args.chunk_overlap
            if args.query_idf is not None:
                config["query_idf"] = args.query_idf
            if args.shards is not None:
                config["shards"] = args.shards
            if args.backend:
                config["backend"] = args.backend
            config.update(
                {
                    k: v
                    for k, v in (
                        ("sparse_mode", args.sparse_mode),
                        ("sparse_adapter", args.sparse_adapter),
                        ("sparse_top_k", args.sparse_top_k),
                        ("query_top_k", args.query_top_k),
                    )
                    if v
                }
            )
            print_obj(c.create_collection(args.name, **config), args.json)
        elif args.action == "drop":
            c.drop_collection(args.name)
            print_obj({"dropped": args.name}, args.json)
        elif args.action == "list":
            cols = c.list_collections()
            if args.json:
                print(json.dumps(plain(cols)))
            else:
                for s in cols:
                    print(f"{s.name:20} {s.documents:>9} docs {s.chunks:>9} chunks  {s.index:14} {s.status}")
        elif args.action == "stats":
            print_obj(c.stats(args.name), args.json)
        elif args.action == "snapshot":
            print_obj(c.snapshot(args.name), args.json)
        elif args.action == "restore":
            print_obj(c.restore(args.name, args.path), args.json)
        elif args.action == "rebuild":
            print_obj(c.rebuild(args.name), args.json)
    return 0


def read_docs(path: Path) -> list[Any]:
    """Documents of a jsonl file in the `index` format ({id|_id, text, title?, metadata?}; other fields
    become metadata), checked line by line as a job checks them; a bad line stops with its number."""
    from lodestar.retrieve.jobs import JobError, parse_line
    from lodestar.retrieve.prepare import DocLimits

    docs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            parsed = parse_line(number, raw.rstrip(b"\r\n"), DocLimits())
            if isinstance(parsed, JobError):
                raise LodestarError(f"{path}: {parsed.message}")
            if parsed is not None:
                docs.append(parsed)
    return docs


def cmd_doc(args: argparse.Namespace) -> int:
    """Single documents over Upsert / Get / Delete (bulk loads: `lodestar index`, a resumable job)."""
    from tqdm import tqdm

    from lodestar.retrieve.types import Document

    with connect(args) as c:
        if args.action == "upsert":
            if bool(args.file) == bool(args.id):
                raise LodestarError("give a jsonl FILE, or --id with --text")
            if args.file:
                docs = read_docs(Path(args.file))
            else:
                try:
                    metadata = json.loads(args.metadata) if args.metadata else {}
                except json.JSONDecodeError as exc:
                    raise LodestarError(f"--metadata is not valid JSON ({exc.msg})") from None
                if args.text is None:
                    raise LodestarError("--id needs --text")
                docs = [Document(args.id, args.text, metadata)]
            written = [0, 0]
            with tqdm(
                total=len(docs), unit="doc", desc="upsert", disable=args.quiet or len(docs) <= args.batch_size
            ) as bar:
                for i in range(0, len(docs), args.batch_size):
                    n, chunks = c.upsert(args.collection, docs[i : i + args.batch_size])
                    written = [written[0] + n, written[1] + chunks]
                    bar.update(n)
            print_obj({"documents": written[0], "chunks": written[1]}, args.json)
        elif args.action == "get":
            found = c.get(args.collection, args.ids)
            rows = [
                {"id": i, "found": d is not None, **({"text": d.text, "metadata": d.metadata} if d else {})}
                for i, d in zip(args.ids, found)
            ]
            if args.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    print(f"{r['id']}: {'not found' if not r['found'] else json.dumps(r['metadata'])}")
                    if r["found"]:
                        print(f"  {r['text'][:300]!r}")
            if not all(r["found"] for r in rows):
                return 3
        elif args.action == "delete":
            print_obj({"deleted": c.delete(args.collection, args.ids)}, args.json)
    return 0


def cmd_search(args: argparse.Namespace) -> int:

    filters = [parse_filter(f) for f in args.filter or []]
    with connect(args) as c:
        results = c.search(
            args.collection,
            args.queries,
            k=args.k,
            retriever=args.retriever,
            fusion=args.fusion,
            alpha=args.alpha,
            rrf_k=args.rrf_k,
            filters=filters,
            include_text=not args.no_text,
            feedback_chunks=args.feedback,
            feedback_weight=args.feedback_weight,
            length_norm=args.length_norm,
        )
    if args.json:
        print(
            json.dumps(
                [
                    [
                        {"id": h.id, "score": h.score, "chunk": h.chunk, "text": h.text, "metadata": h.metadata}
                        for h in hits
                    ]
                    for hits in results
                ]
            )
        )
        return 0
    for q, hits in zip(args.queries, results):
        print(f"# {q}")
        for rank, h in enumerate(hits, 1):
            print(
                f"{rank:3d}. {h.score:8.4f}  {h.id:20} {h.chunk_text[:80]!r}"
                if not args.no_text
                else f"{rank:3d}. {h.score:8.4f}  {h.id}"
            )
    return 0


FILTER_OPS = [
    (">=", "gte"),
    ("<=", "lte"),
    ("!=", "ne"),
    ("=", "eq"),
    (">", "gt"),
    ("<", "lt"),
    (" nin ", "nin"),
    (" in ", "in"),
]


def parse_filter(text: str) -> tuple[str, str, Any]:
    """'year>=2000', 'lang=en', 'tag in ["a","b"]' -> (field, op, value); values are JSON when they parse."""
    for symbol, op in FILTER_OPS:
        if symbol in text:
            field, raw = text.split(symbol, 1)
            try:
                value = json.loads(raw.strip())
            except json.JSONDecodeError:
                value = raw.strip()
            return field.strip(), op, value
    raise LodestarError(
        f"cannot parse filter {text!r}: use FIELD=VALUE, FIELD>=N, FIELD in [..] (ops: = != > >= < <= in nin)"
    )


def cmd_eval_beir(args: argparse.Namespace) -> int:
    from lodestar.retrieve.eval.beir import eval_beir
    from lodestar.retrieve.types import CollectionConfig

    engine, dense = eval_engine(args)
    config = CollectionConfig(
        name="eval",
        dense=dense,
        mode=args.mode or "mean",
        adapter=args.adapter or "",
        index=args.index or "Flat",
        query_instruction=args.query_instruction or "",
        query_prompt=args.query_prompt or "",
        doc_prompt=args.doc_prompt or "",
        sparse=args.sparse,
        sparse_adapter=args.sparse_adapter or "",
        sparse_mode=args.sparse_mode or "echo",
        query_idf=args.query_idf,
        chunk_tokens=args.chunk_tokens if args.chunk_tokens is not None else 256,
        backend=args.backend,
    )
    try:
        results = eval_beir(
            engine,
            Path(args.dir),
            retrievers=tuple(args.retriever.split(",")),
            config=config,
            fusions=tuple(args.fusion.split(",")),
            alphas=tuple(float(a) for a in str(args.alpha).split(",")),
            progress=not args.quiet,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            feedback=(args.feedback, args.feedback_weight),
            length_norm=args.length_norm,
            milvus=milvus_args(args),
        )
    finally:
        engine.close()
    for r in results:
        print(json.dumps(r))
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    ev = groups["eval"]
    col = sub.add_parser("collection", help="manage retrieval collections")
    col_sub = col.add_subparsers(dest="action", required=True)
    cc = col_sub.add_parser("create", help="create a collection (config is fixed at creation)")
    cc.add_argument("name")
    cc.add_argument("--mode", help="embedding mode (default mean)")
    cc.add_argument("--index", help="FAISS factory string: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16")
    cc.add_argument("--shards", type=int, help="dense index shards searched in parallel, 1..64 (default 1)")
    cc.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        help="where the collection lives: faiss (in the server, default) | milvus (the server's LODESTAR_MILVUS_URI)",
    )
    cc.add_argument("--sparse", help="none | bm25 | learned (default bm25)")
    cc.add_argument("--dense", help="model | none (none: sparse only, no model forward; default model)")
    cc.add_argument("--sparse-mode", help="learned: mode whose span the SPLADE weights pool (default echo)")
    cc.add_argument("--sparse-adapter", help="learned: adapter from `lodestar train sparse`")
    cc.add_argument("--sparse-top-k", type=int, help="learned: weights per chunk (default 256)")
    cc.add_argument("--query-top-k", type=int, help="learned: weights per query (default 64)")
    cc.add_argument(
        "--query-idf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learned: scale query weights by each term's IDF over the collection (default on)",
    )
    cc.add_argument("--metric", help="cosine | ip | l2")
    cc.add_argument("--dimensions", type=int, default=0)
    cc.add_argument("--adapter")
    cc.add_argument("--query-instruction")
    cc.add_argument("--doc-instruction")
    cc.add_argument("--query-prompt")
    cc.add_argument("--doc-prompt")
    cc.add_argument("--chunk-tokens", type=int)
    cc.add_argument("--chunk-overlap", type=int)
    for action, helptext in (
        ("drop", "delete a collection and its files"),
        ("stats", "documents, chunks, index, bytes, status"),
        ("snapshot", "write the indexes to disk now"),
        ("rebuild", "rebuild indexes from the document store"),
    ):
        a = col_sub.add_parser(action, help=helptext)
        a.add_argument("name")
    rs = col_sub.add_parser("restore", help="load a snapshot folder (on the server) into a collection")
    rs.add_argument("name")
    rs.add_argument("path")
    col_sub.add_parser("list", help="all collections")
    for a in col_sub.choices.values():
        a.add_argument("--json", action="store_true")
    col.set_defaults(func=cmd_collection)

    se = sub.add_parser("search", help="search a collection")
    se.add_argument("queries", nargs="+")
    se.add_argument("--collection", "-c", required=True)
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--retriever", default="dense", help="dense | sparse | hybrid")
    se.add_argument("--fusion", default="", help="auto (default: the collection's own choice) | rrf | weighted | dbsf")
    se.add_argument("--alpha", type=float, help="weighted fusion: weight of dense (0..1)")
    se.add_argument("--rrf-k", type=int, help="rrf fusion: the k in 1 / (k + rank) (default 60)")
    se.add_argument("--filter", action="append", help="FIELD=VALUE, FIELD>=N, FIELD in [..]; repeatable (AND)")
    se.add_argument("--no-text", action="store_true", help="ids and scores only (the server skips reading texts)")
    se.add_argument(
        "--feedback",
        type=int,
        default=0,
        metavar="N",
        help="learned sparse: pseudo-relevance feedback from "
        "the first ranking's top N chunks (0 = off; 3 did best on Cranfield)",
    )
    se.add_argument("--feedback-weight", type=float, help="weight of the feedback chunks' mean (default 1)")
    se.add_argument(
        "--length-norm",
        type=float,
        metavar="B",
        help="learned sparse: chunk length normalisation, BM25's b (0..1, default 0 = off)",
    )
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_search)

    doc = sub.add_parser("doc", help="upsert, get or delete single documents (bulk loads: `lodestar index`)")
    doc_sub = doc.add_subparsers(dest="action", required=True)
    du = doc_sub.add_parser(
        "upsert",
        help="insert or replace documents: a jsonl FILE ({id|_id, text, title?, metadata?}) "
        "or one from --id/--text/--metadata",
    )
    du.add_argument("file", nargs="?")
    du.add_argument("--id")
    du.add_argument("--text")
    du.add_argument("--metadata", help="a JSON object")
    du.add_argument("--batch-size", type=int, default=32, help="documents per Upsert call")
    du.add_argument("--quiet", action="store_true")
    dg = doc_sub.add_parser("get", help="documents by id (exit status 3 when any is missing)")
    dg.add_argument("ids", nargs="+")
    dd = doc_sub.add_parser("delete", help="delete documents by id (unknown ids are ignored)")
    dd.add_argument("ids", nargs="+")
    for a in doc_sub.choices.values():
        a.add_argument("--collection", "-c", required=True)
        a.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doc)

    bq = ev.add_parser("beir", help="nDCG@10 and recall@100 on a BEIR folder (in-process)")
    bq.add_argument("dir")
    bq.add_argument("--retriever", default="dense", help="dense | bm25 | sparse | hybrid, or several comma-separated")
    bq.add_argument("--mode")
    bq.add_argument("--adapter")
    bq.add_argument("--index", help="FAISS factory string (default Flat)")
    bq.add_argument("--fusion", default="auto", help="auto | rrf | weighted | dbsf, or several comma-separated")
    bq.add_argument("--dense", help="model | none (default: none when every retriever is bm25: no model loaded)")
    bq.add_argument(
        "--alpha", default="0.5", help="weighted fusion: alpha * dense + (1 - alpha) * sparse; several comma-separated"
    )
    bq.add_argument("--query-instruction")
    bq.add_argument("--query-prompt")
    bq.add_argument("--doc-prompt")
    bq.add_argument("--chunk-tokens", type=int)
    bq.add_argument(
        "--sparse",
        default="bm25",
        help="the collection's sparse side: bm25 | learned (retrievers sparse, hybrid use it)",
    )
    bq.add_argument("--sparse-adapter", help="learned: adapter from `lodestar train sparse`")
    bq.add_argument("--sparse-mode", help="learned: default echo")
    bq.add_argument(
        "--query-idf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learned: scale query weights by each term's IDF over the collection (default on)",
    )
    bq.add_argument("--model")
    bq.add_argument(
        "--work-dir",
        help="keep the indexed corpus here: an interrupted run resumes, and a rerun with the "
        "same corpus, config, model and adapters (other retrievers, fusions, alphas) encodes nothing",
    )
    bq.add_argument(
        "--feedback",
        type=int,
        default=0,
        metavar="N",
        help="learned sparse: pseudo-relevance feedback from the first ranking's top N chunks (0 = off)",
    )
    bq.add_argument(
        "--feedback-weight", type=float, default=1.0, help="weight of the feedback chunks' mean (default 1)"
    )
    bq.add_argument(
        "--length-norm",
        type=float,
        default=0.0,
        metavar="B",
        help="learned sparse: chunk length normalisation, BM25's b (0..1, default 0 = off)",
    )
    add_backend_args(bq)
    bq.add_argument("--quiet", action="store_true")
    bq.set_defaults(func=cmd_eval_beir)
