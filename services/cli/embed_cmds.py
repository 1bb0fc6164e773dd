"""Commands of the embedding side: serve, embed, info, eval sts, bench embed."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import add_embed_options, embed_options, local_engine, read_texts, settings, write_result


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from lodestar.services.server import serve

    only = tuple(args.only.split(",")) if args.only else None
    s = settings(port=args.port, host=args.host, only=only, model=args.model, data_dir=args.data_dir)
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(s))
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
    opts = embed_options(args)
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


def cmd_eval_sts(args: argparse.Namespace) -> int:
    from lodestar.embed.evaluate import eval_sts
    from lodestar.embed.types import EmbedOptions

    engine = local_engine(args)
    try:
        result = eval_sts(engine, Path(args.file), EmbedOptions(**embed_options(args)), batch_size=args.batch_size, progress=not args.quiet)
    finally:
        engine.close()
    print(json.dumps(result))
    return 0


def cmd_bench_embed(args: argparse.Namespace) -> int:
    from lodestar.services.benchmarks import bench_embed

    result = bench_embed(
        texts=read_texts(Path(args.texts))[: args.limit or None],
        options=embed_options(args),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        model=args.model,
    )
    write_result(result, args.out)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    ev, bn = groups["eval"], groups["bench"]
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
    add_embed_options(e)
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="what the server offers")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    sts = ev.add_parser("sts", help="STS Spearman of cosine vs gold (TSV: sentence1 sentence2 score)")
    sts.add_argument("file")
    sts.add_argument("--model")
    sts.add_argument("--batch-size", type=int, default=32)
    sts.add_argument("--quiet", action="store_true")
    add_embed_options(sts)
    sts.set_defaults(func=cmd_eval_sts)

    be = bn.add_parser("embed", help="served throughput vs the in-process ceiling")
    be.add_argument("--texts", required=True, help="jsonl with 'text' or one text per line")
    be.add_argument("--concurrency", type=int, default=8)
    be.add_argument("--batch-size", type=int, default=16, help="texts per client request")
    be.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    be.add_argument("--model")
    be.add_argument("--out", help="also write the JSON here")
    add_embed_options(be)
    be.set_defaults(func=cmd_bench_embed)
