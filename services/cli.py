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
    settings = _settings(port=args.port, host=args.host, only=only, model=args.model)
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
    line = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lodestar.services.settings import Settings

    default_server = Settings().server
    p = argparse.ArgumentParser(prog="lodestar", description="Lodestar retrieval-and-embedding stack")
    p.add_argument("--server", default=default_server, help=f"HOST:PORT of a running server (default {default_server})")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC server (all services, bundled model by default)")
    s.add_argument("--port", type=int)
    s.add_argument("--host")
    s.add_argument("--only", help="comma-separated services to serve (embed)")
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
    return p


def main(argv: list[str] | None = None) -> int:
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
