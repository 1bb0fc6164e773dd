"""Helpers every command module shares: settings, output, reading input files, embedding flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError


def settings(**overrides: Any) -> Any:
    from lodestar.services.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields the connection options (--tls, --tls-ca, --tls-cert, --tls-key, --token) override."""
    return {
        "tls": getattr(args, "tls", False) or None,
        "tls_ca": getattr(args, "tls_ca", None),
        "tls_cert": getattr(args, "tls_cert", None),
        "tls_key": getattr(args, "tls_key", None),
        "token": getattr(args, "token", None),
    }


def connect(args: argparse.Namespace, timeout: float | None = 60.0, channel: Any = None) -> Any:
    """A Client for the command's --server, with TLS and the token from the options or LODESTAR_*."""
    from lodestar.services.client import Client

    try:
        return Client(args.server, timeout=timeout, channel=channel, **settings(**connection(args)).client_security())
    except ValueError as exc:  # an unreadable certificate file, a certificate without its key
        raise LodestarError(str(exc)) from None


def plain(obj: Any) -> Any:
    """Client results (dataclasses, lists of them) as JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, list):
        return [plain(o) for o in obj]
    return obj


def print_obj(obj: Any, as_json: bool) -> None:
    obj = plain(obj)
    if as_json:
        print(json.dumps(obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            print(f"{key:14} {value}")
    else:
        print(obj)


def add_result_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    """Options of the commands that run locally and print a JSON result: --model, --out, --quiet."""
    if model:
        p.add_argument("--model", help="model to load (default: the bundled one)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def write_result(result: dict[str, Any], out: str | None) -> None:
    """Print one JSON line; with `out`, also write it indented there."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


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


def local_engine(args: argparse.Namespace) -> Any:
    """An in-process engine built from settings (LODESTAR_MODEL etc.), for eval commands."""
    from lodestar.services.runtime import Runtime

    return Runtime(settings(model=getattr(args, "model", None)), [])._build_engine(None)


def eval_engine(args: argparse.Namespace) -> tuple[Any, str]:
    """(embedder, dense kind) of an evaluation: `--dense`, or none when every retriever is bm25. Without
    a dense side (and a BM25 sparse one) the embedder is the model's tokenizer alone (chunking by tokens,
    as a served collection does): no weights loaded, no forward."""
    from lodestar.backbone import BackboneConfig
    from lodestar.retrieve.eval.lexical import TokenizerOnly

    dense = args.dense or ("none" if set(args.retriever.split(",")) <= {"bm25"} else "model")
    if dense != "none" or args.sparse == "learned":
        return local_engine(args), dense
    s = settings(model=getattr(args, "model", None))
    return TokenizerOnly(BackboneConfig(model=s.model, cache_dir=s.cache_dir)), dense


def embed_options(args: argparse.Namespace) -> dict[str, Any]:
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


def add_embed_options(p: argparse.ArgumentParser) -> None:
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
