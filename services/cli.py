"""The `lodestar` command line: serve, embed, info, eval, bench.

Commands that talk to a server take the global `--server HOST:PORT`; `--json` prints one JSON
object for scripts. Errors exit non-zero with the server's message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError


def _settings(**overrides: Any) -> Any:
    from lodestar.services.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _embed_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mode": args.mode or "",
        "prompt": args.prompt or "",
        "instruction": args.instruction or "",
        "adapter": args.adapter or "",
        "dimensions": args.dimensions,
        "normalize": not args.no_normalize,
        "dtype": args.dtype,
        "truncate": not args.no_truncate,
        "max_tokens": args.max_tokens,
        "start_layer": args.start_layer,
        "end_layer": args.end_layer,
        "output_layer": args.output_layer,
    }


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedding options")
    g.add_argument("--mode", help="mean | last | prompteol | echo | token_prepend | bidirectional")
    g.add_argument("--prompt", help='template with {text}, e.g. \'This sentence : "{text}" means in one word:"\'')
    g.add_argument("--instruction", help="task instruction prepended (not pooled)")
    g.add_argument("--adapter", help="LoRA adapter name or path")
    g.add_argument("--dimensions", type=int, default=0, help="keep the first N dimensions (0: all)")
    g.add_argument("--dtype", default="float32", help="float32 | float16 | int8 | binary")
    g.add_argument("--no-normalize", action="store_true", help="do not L2-normalise")
    g.add_argument("--no-truncate", action="store_true", help="reject texts over max tokens instead of cutting")
    g.add_argument("--max-tokens", type=int, default=0)
    g.add_argument("--start-layer", type=int, help="token_prepend: first layer")
    g.add_argument("--end-layer", type=int, help="token_prepend: last layer")
    g.add_argument("--output-layer", type=int, help="token_prepend: output layer (-1 final)")


def read_texts(path: Path) -> list[str]:
    """jsonl with a `text` field (BEIR corpora: title + text), or one text per line."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LodestarError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                text = obj.get("text")
                if not isinstance(text, str):
                    raise LodestarError(f"{path}:{n}: no string field 'text'")
                title = obj.get("title")
                texts.append(f"{title}. {text}" if title else text)
            else:
                texts.append(line)
    return texts


# --- commands ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from lodestar.services.server import serve

    only = tuple(args.only.split(",")) if args.only else None
    settings = _settings(port=args.port, host=args.host, only=only, model=args.model, data_dir=args.data_dir)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from lodestar.services.client import Client

    if args.file:
        texts = read_texts(Path(args.file))
    else:
        texts = list(args.texts)
    if not texts:
        raise LodestarError("nothing to embed: give texts or --file")
    opts = _embed_options(args)
    with Client(args.server) as client:
        if not args.file and not args.out:  # a few texts on the command line: print them
            res = client.embed(texts, **opts)
            if args.json:
                print(json.dumps({"model": res.model, "mode": res.mode, "shape": list(res.packed.shape), "dtype": res.packed.dtype, "token_counts": res.token_counts, "vectors": res.vectors.tolist()}))
            else:
                for t, v, n in zip(texts, res.vectors, res.token_counts):
                    print(f"{t[:40]!r:44} {n:4d} tok  [{' '.join(f'{x:+.3f}' for x in v[:6])} ...]")
            return 0
        out = Path(args.out or "embeddings.npy")
        parts = out.with_name(out.name + ".parts")  # resumable: one file per finished batch
        parts.mkdir(parents=True, exist_ok=True)
        batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
        todo = [i for i in range(len(batches)) if not (parts / f"{i:06d}.npy").exists()]
        bar = tqdm(total=len(texts), initial=len(texts) - sum(len(batches[i]) for i in todo), unit="text", desc="embed", disable=args.quiet)
        for i, res in zip(todo, client.embed_stream((batches[i] for i in todo), **opts)):
            tmp = parts / f"{i:06d}.tmp.npy"
            np.save(tmp, res.vectors)
            tmp.replace(parts / f"{i:06d}.npy")
            bar.update(len(batches[i]))
        bar.close()
        table = np.concatenate([np.load(parts / f"{i:06d}.npy") for i in range(len(batches))])
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, table)
        tmp.replace(out)
        for f in parts.iterdir():
            f.unlink()
        parts.rmdir()
        if args.json:
            print(json.dumps({"out": str(out), "shape": list(table.shape), "dtype": str(table.dtype)}))
        else:
            print(f"wrote {out} {table.shape} {table.dtype}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lodestar.services.client import Client

    with Client(args.server) as client:
        info = client.info()
        info["health"] = client.health()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"model       {info['model']}  ({info['torch_dtype']} on {info['device']}, {info['num_layers']} layers)")
    print(f"dimensions  {info['dimensions']}")
    print(f"max tokens  {info['max_tokens']} per text, {info['max_texts_per_request']} texts per request")
    print(f"modes       {', '.join(m['name'] for m in info['modes'])} (default {info['default_mode']})")
    print(f"adapters    {', '.join(info['adapters']) or '-'}")
    print(f"dtypes      {', '.join(info['dtypes'])}")
    print(f"health      {info['health']}   version {info['version']}")
    return 0


def _local_engine(args: argparse.Namespace) -> Any:
    """An in-process engine built from settings (LODESTAR_MODEL etc.), for eval commands."""
    from lodestar.services.runtime import Runtime

    settings = _settings(model=getattr(args, "model", None))
    return Runtime(settings, [])._build_engine(None)


def cmd_eval_sts(args: argparse.Namespace) -> int:
    from lodestar.embed.evaluate import eval_sts
    from lodestar.embed.types import EmbedOptions

    engine = _local_engine(args)
    try:
        result = eval_sts(engine, Path(args.file), EmbedOptions(**_embed_options(args)), batch_size=args.batch_size, progress=not args.quiet)
    finally:
        engine.close()
    print(json.dumps(result))
    return 0


def cmd_bench_embed(args: argparse.Namespace) -> int:
    from lodestar.services.benchmarks import bench_embed

    result = bench_embed(
        texts=read_texts(Path(args.texts))[: args.limit or None],
        options=_embed_options(args),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        model=args.model,
    )
    _write_result(result, args.out)
    return 0


# --- retrieval -----------------------------------------------------------------------------------


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            print(f"{key:14} {value}")
    else:
        print(obj)


def cmd_collection(args: argparse.Namespace) -> int:
    from lodestar.services.client import Client

    with Client(args.server) as c:
        if args.action == "create":
            config = {
                "mode": args.mode or "", "index": args.index or "", "sparse": args.sparse or "",
                "metric": args.metric or "", "dimensions": args.dimensions, "adapter": args.adapter or "",
                "query_instruction": args.query_instruction or "", "doc_instruction": args.doc_instruction or "",
                "query_prompt": args.query_prompt or "", "doc_prompt": args.doc_prompt or "",
            }
            if args.chunk_tokens is not None:
                config["chunk_tokens"] = args.chunk_tokens
            if args.chunk_overlap is not None:
                config["chunk_overlap"] = args.chunk_overlap
            _print(c.create_collection(args.name, **config), args.json)
        elif args.action == "drop":
            c.drop_collection(args.name)
            _print({"dropped": args.name}, args.json)
        elif args.action == "list":
            cols = c.list_collections()
            if args.json:
                print(json.dumps(cols))
            else:
                for s in cols:
                    print(f"{s['name']:20} {s['documents']:>9} docs {s['chunks']:>9} chunks  {s['index']:14} {s['status']}")
        elif args.action == "stats":
            _print(c.stats(args.name), args.json)
        elif args.action == "snapshot":
            _print(c.snapshot(args.name), args.json)
        elif args.action == "restore":
            _print(c.restore(args.name, args.path), args.json)
        elif args.action == "rebuild":
            _print(c.rebuild(args.name), args.json)
    return 0


def read_documents(path: Path, start: int = 0):  # type: ignore[no-untyped-def]
    """Yield (line_number, document dict) from jsonl ({id|_id, text, title?, metadata?})."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n <= start or not line.strip():
                continue
            try:
                o = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LodestarError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            doc_id = o.get("id", o.get("_id"))
            title, text = (o.get("title") or "").strip(), (o.get("text") or "").strip()
            body = f"{title}. {text}" if title and text else (title or text)
            meta = o.get("metadata") or {k: v for k, v in o.items() if k not in ("id", "_id", "text", "title")}
            yield n, {"id": str(doc_id) if doc_id is not None else "", "text": body, "metadata": meta}


def cmd_index(args: argparse.Namespace) -> int:
    """Upsert a jsonl file in batches; progress is kept in FILE.<collection>.progress so a rerun resumes."""
    from tqdm import tqdm

    from lodestar.services.client import Client

    path = Path(args.file)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise LodestarError(f"{path} does not exist (give a jsonl file or a BEIR folder)")
    state_file = path.with_name(f"{path.name}.{args.collection}.progress")
    st = path.stat()
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    fingerprint = {"size": st.st_size, "mtime": int(st.st_mtime)}
    start = state.get("line", 0) if state.get("file") == fingerprint else 0
    total = sum(1 for _ in open(path, encoding="utf-8"))
    docs = chunks = 0
    with Client(args.server, timeout=600) as c:
        bar = tqdm(total=total, initial=start, unit="line", desc=f"index {args.collection}", disable=args.quiet)
        batch: list[dict] = []
        last = start

        def flush() -> None:
            nonlocal docs, chunks, batch
            if batch:
                d, ch = c.upsert(args.collection, batch)
                docs, chunks = docs + d, chunks + ch
                batch = []
            state_file.write_text(json.dumps({"file": fingerprint, "line": last}))

        for n, doc in read_documents(path, start):
            batch.append(doc)
            if len(batch) >= args.batch_size:
                last = n
                flush()
                bar.update(n - bar.n)
        last = total
        flush()
        bar.update(total - bar.n)
        bar.close()
    state_file.unlink(missing_ok=True)
    _print({"collection": args.collection, "documents": docs, "chunks": chunks, "resumed_from_line": start}, args.json)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from lodestar.services.client import Client

    filters = [parse_filter(f) for f in args.filter or []]
    with Client(args.server) as c:
        results = c.search(args.collection, args.queries, k=args.k, retriever=args.retriever, fusion=args.fusion, alpha=args.alpha, filters=filters)
    if args.json:
        print(json.dumps([[{"id": h.id, "score": h.score, "chunk": h.chunk, "text": h.text, "metadata": h.metadata} for h in hits] for hits in results]))
        return 0
    for q, hits in zip(args.queries, results):
        print(f"# {q}")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}. {h.score:8.4f}  {h.id:20} {h.chunk_text[:80]!r}")
    return 0


FILTER_OPS = [(">=", "gte"), ("<=", "lte"), ("!=", "ne"), ("=", "eq"), (">", "gt"), ("<", "lt"), (" nin ", "nin"), (" in ", "in")]


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
    raise LodestarError(f"cannot parse filter {text!r}: use FIELD=VALUE, FIELD>=N, FIELD in [..] (ops: = != > >= < <= in nin)")


def cmd_eval_beir(args: argparse.Namespace) -> int:
    from lodestar.retrieve.evaluate import eval_beir
    from lodestar.retrieve.types import CollectionConfig

    engine = _local_engine(args)
    config = CollectionConfig(
        name="eval", mode=args.mode or "mean", adapter=args.adapter or "", index=args.index or "Flat",
        query_instruction=args.query_instruction or "", query_prompt=args.query_prompt or "",
        doc_prompt=args.doc_prompt or "", sparse="bm25",
        chunk_tokens=args.chunk_tokens if args.chunk_tokens is not None else 256,
    )
    try:
        results = eval_beir(
            engine, Path(args.dir), retrievers=tuple(args.retriever.split(",")), config=config,
            fusions=tuple(args.fusion.split(",")), alpha=args.alpha, progress=not args.quiet,
        )
    finally:
        engine.close()
    for r in results:
        print(json.dumps(r))
    return 0


def cmd_bench_retrieve(args: argparse.Namespace) -> int:
    from lodestar.retrieve.bench import SPECS, bench_indexes

    result: dict[str, Any] = {"indexes": bench_indexes(
        n=args.vectors, dim=args.dim, queries=args.queries, batch=args.batch, threads=args.threads, specs=tuple(args.index) if args.index else SPECS,
        progress=not args.quiet,
    )}
    if args.corpus:
        from lodestar.retrieve.evaluate import read_beir
        from lodestar.services.benchmarks import bench_search_latency

        docs, queries, _ = read_beir(Path(args.corpus))
        result["grpc_latency"] = bench_search_latency(
            docs[: args.docs], list(queries.values())[: args.latency_queries], mode=args.mode or "token_prepend",
            model=args.model, progress=not args.quiet,
        )
        result["grpc_latency"]["corpus"] = str(args.corpus)
    _write_result(result, args.out)
    return 0


def _write_result(result: dict[str, Any], out: str | None) -> None:
    """Print one JSON line; with `out`, also write it indented there."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def build_parser() -> argparse.ArgumentParser:
    from lodestar.services.settings import Settings

    default_server = Settings().server
    p = argparse.ArgumentParser(prog="lodestar", description="Lodestar retrieval-and-embedding stack")
    p.add_argument("--server", default=default_server, help=f"HOST:PORT of a running server (default {default_server})")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC server (all services, bundled model by default)")
    s.add_argument("--port", type=int)
    s.add_argument("--host")
    s.add_argument("--only", help="comma-separated services to serve (embed,retrieve)")
    s.add_argument("--data-dir", help="where collections live (default ./.lodestar)")
    s.add_argument("--model", help="bundled | HF folder | .gguf file")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("embed", help="embed texts (arguments) or a file (jsonl with 'text', or one per line) into .npy")
    e.add_argument("texts", nargs="*")
    e.add_argument("--file", "-f")
    e.add_argument("--out", "-o", help="output .npy (resumable: finished batches are kept in OUT.parts/)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", action="store_true")
    e.add_argument("--quiet", action="store_true")
    _add_embed_options(e)
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="what the server offers")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    ev = sub.add_parser("eval", help="quality evaluations").add_subparsers(dest="eval", required=True)
    sts = ev.add_parser("sts", help="STS Spearman of cosine vs gold (TSV: sentence1 sentence2 score)")
    sts.add_argument("file")
    sts.add_argument("--model")
    sts.add_argument("--batch-size", type=int, default=32)
    sts.add_argument("--quiet", action="store_true")
    _add_embed_options(sts)
    sts.set_defaults(func=cmd_eval_sts)

    col = sub.add_parser("collection", help="manage retrieval collections")
    col_sub = col.add_subparsers(dest="action", required=True)
    cc = col_sub.add_parser("create", help="create a collection (config is fixed at creation)")
    cc.add_argument("name")
    cc.add_argument("--mode", help="embedding mode (default mean)")
    cc.add_argument("--index", help="FAISS factory string: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16")
    cc.add_argument("--sparse", help="none | bm25 (default bm25)")
    cc.add_argument("--metric", help="cosine | ip | l2")
    cc.add_argument("--dimensions", type=int, default=0)
    cc.add_argument("--adapter")
    cc.add_argument("--query-instruction")
    cc.add_argument("--doc-instruction")
    cc.add_argument("--query-prompt")
    cc.add_argument("--doc-prompt")
    cc.add_argument("--chunk-tokens", type=int)
    cc.add_argument("--chunk-overlap", type=int)
    for action, helptext in (("drop", "delete a collection and its files"), ("stats", "documents, chunks, index, bytes, status"),
                             ("snapshot", "write the indexes to disk now"), ("rebuild", "rebuild indexes from the document store")):
        a = col_sub.add_parser(action, help=helptext)
        a.add_argument("name")
    rs = col_sub.add_parser("restore", help="load a snapshot folder (on the server) into a collection")
    rs.add_argument("name")
    rs.add_argument("path")
    col_sub.add_parser("list", help="all collections")
    for a in col_sub.choices.values():
        a.add_argument("--json", action="store_true")
    col.set_defaults(func=cmd_collection)

    ix = sub.add_parser("index", help="upsert a jsonl file or BEIR corpus into a collection (resumable)")
    ix.add_argument("file", help="jsonl ({id|_id, text, title?, metadata?}) or a BEIR folder")
    ix.add_argument("--collection", "-c", required=True)
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--json", action="store_true")
    ix.add_argument("--quiet", action="store_true")
    ix.set_defaults(func=cmd_index)

    se = sub.add_parser("search", help="search a collection")
    se.add_argument("queries", nargs="+")
    se.add_argument("--collection", "-c", required=True)
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--retriever", default="dense", help="dense | sparse | hybrid")
    se.add_argument("--fusion", default="rrf", help="rrf | weighted")
    se.add_argument("--alpha", type=float, help="weighted fusion: weight of dense (0..1)")
    se.add_argument("--filter", action="append", help="FIELD=VALUE, FIELD>=N, FIELD in [..]; repeatable (AND)")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_search)

    bq = ev.add_parser("beir", help="nDCG@10 and recall@100 on a BEIR folder (in-process)")
    bq.add_argument("dir")
    bq.add_argument("--retriever", default="dense", help="dense | bm25 | sparse | hybrid, or several comma-separated")
    bq.add_argument("--mode")
    bq.add_argument("--adapter")
    bq.add_argument("--index", help="FAISS factory string (default Flat)")
    bq.add_argument("--fusion", default="rrf", help="rrf | weighted, or both comma-separated (hybrid only)")
    bq.add_argument("--alpha", type=float, default=0.5, help="weighted fusion: alpha * dense + (1 - alpha) * sparse")
    bq.add_argument("--query-instruction")
    bq.add_argument("--query-prompt")
    bq.add_argument("--doc-prompt")
    bq.add_argument("--chunk-tokens", type=int)
    bq.add_argument("--model")
    bq.add_argument("--quiet", action="store_true")
    bq.set_defaults(func=cmd_eval_beir)

    bn = sub.add_parser("bench", help="speed benchmarks").add_subparsers(dest="bench", required=True)
    be = bn.add_parser("embed", help="served throughput vs the in-process ceiling")
    be.add_argument("--texts", required=True, help="jsonl with 'text' or one text per line")
    be.add_argument("--concurrency", type=int, default=8)
    be.add_argument("--batch-size", type=int, default=16, help="texts per client request")
    be.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    be.add_argument("--model")
    be.add_argument("--out", help="also write the JSON here")
    _add_embed_options(be)
    be.set_defaults(func=cmd_bench_embed)

    br = bn.add_parser("retrieve", help="QPS and recall@10 vs exact per index type; gRPC search latency")
    br.add_argument("--vectors", type=int, default=100_000)
    br.add_argument("--dim", type=int, default=128)
    br.add_argument("--queries", type=int, default=1000)
    br.add_argument("--batch", type=int, default=1, help="queries per search call (1: as a service receives them)")
    br.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads")
    br.add_argument("--index", action="append", help="FAISS factory string, repeatable; Flat (exact) must come first "
                    "(default: Flat, HNSW32, IVF1024,Flat, IVF4096,Flat, IVF1024,SQ8, IVF1024,PQ32)")
    br.add_argument("--corpus", help="BEIR folder: also measure gRPC search latency on its documents and queries")
    br.add_argument("--docs", type=int, default=300, help="documents of --corpus to index for the latency part")
    br.add_argument("--latency-queries", type=int, default=200)
    br.add_argument("--mode")
    br.add_argument("--model")
    br.add_argument("--out", help="also write the JSON here")
    br.add_argument("--quiet", action="store_true")
    br.set_defaults(func=cmd_bench_retrieve)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    # FAISS's OpenMP threads spin while waiting; beside torch and gRPC threads on a small machine
    # that made index builds ~40x slower. Passive waiting must be set before FAISS loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lodestar.services.client import ClientError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClientError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except LodestarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
