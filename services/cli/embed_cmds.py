"""Commands of the embedding side: serve, embed, info, eval sts, bench embed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import (
    add_embed_options,
    connect,
    embed_options,
    local_engine,
    plain,
    read_texts,
    settings,
    write_result,
)


def cmd_serve(args: argparse.Namespace) -> int:
    from lodestar.services.observability.context import configure_logging
    from lodestar.services.server import run_and_exit

    only = tuple(args.only.split(",")) if args.only else None
    s = settings(
        port=args.port,
        host=args.host,
        only=only,
        model=args.model,
        data_dir=args.data_dir,
        dtype=args.dtype,
        device=args.device,
        log_level=args.log_level,
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_client_ca=args.tls_client_ca,
        tokens_file=args.tokens_file,
        metrics_port=args.metrics_port,
        log_format=args.log_format,
        otlp_endpoint=args.otlp_endpoint,
    )
    configure_logging(s.log_level, s.log_format)
    run_and_exit(s)  # exits the process
    return 0


def _sparse_json(result: Any) -> list[dict[str, list]]:
    """Per text {"ids": [...], "weights": [...]} (by decreasing weight; "tokens" too when they were
    asked for), or [] without sparse output."""
    rows = [{"ids": t.tolist(), "weights": [round(float(x), 6) for x in w]} for t, w in (result.sparse or [])]
    for row, tokens in zip(rows, result.sparse_tokens or ()):
        row["tokens"] = tokens
    return rows


def _resume_key(texts: list[str], opts: dict[str, Any], batch_size: int) -> str:
    """What the finished batches in OUT.parts/ were made from: a rerun with other texts, options or
    batch size must not reuse them."""
    import hashlib

    h = hashlib.sha256(json.dumps([opts, batch_size], sort_keys=True).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _open_parts(parts: Path, key: str, quiet: bool) -> None:
    """Keep OUT.parts/ only if it was made from the same input (a folder without a key predates it: kept)."""
    import shutil

    stamp = parts / "KEY"
    if parts.exists() and stamp.exists() and stamp.read_text().strip() != key:
        if not quiet:
            print(f"{parts}: made from other texts or options; starting over", file=sys.stderr)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(key + "\n")


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from lodestar.durable import save_npy_atomic, write_atomic

    if args.file:
        texts = read_texts(Path(args.file))
    else:
        texts = list(args.texts)
    if not texts:
        raise LodestarError("nothing to embed: give texts or --file")
    opts = embed_options(args)
    sparse = args.sparse or args.no_dense
    if sparse:
        opts.update(
            sparse=True,
            sparse_top_k=args.sparse_top_k,
            sparse_threshold=args.sparse_threshold,
            with_dense=not args.no_dense,
        )
    dense = not args.no_dense
    with connect(args) as client:
        if not args.file and not args.out:  # a few texts on the command line: print them
            res = client.embed(texts, **(opts | {"sparse_tokens": True} if sparse else opts))
            if args.json:
                obj: dict[str, Any] = {"model": res.model, "mode": res.mode, "token_counts": res.token_counts}
                if dense:
                    obj.update(shape=list(res.packed.shape), dtype=res.packed.dtype, vectors=res.vectors.tolist())
                if sparse:
                    obj["sparse"] = _sparse_json(res)
                print(json.dumps(obj))
            else:
                for i, (t, n) in enumerate(zip(texts, res.token_counts)):
                    line = f"{t[:40]!r:44} {n:4d} tok"
                    if dense:
                        line += f"  [{' '.join(f'{x:+.3f}' for x in res.vectors[i][:6])} ...]"
                    if sparse and res.sparse is not None:
                        ids, w = res.sparse[i]
                        names = res.sparse_tokens[i] if res.sparse_tokens else [str(a) for a in ids.tolist()]
                        line += (
                            f"  {ids.size} terms: {' '.join(f'{a}:{b:.2f}' for a, b in zip(names[:8], w[:8].tolist()))}"
                        )
                    print(line)
            return 0
        out = Path(args.out or ("embeddings.npy" if dense else "embeddings.sparse.jsonl"))
        sparse_out = (out if not dense else out.with_name(out.stem + ".sparse.jsonl")) if sparse else None
        parts = out.with_name(out.name + ".parts")  # resumable: one file per finished batch
        _open_parts(parts, _resume_key(texts, opts, args.batch_size), args.quiet)
        batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

        def done(i: int) -> bool:
            return (not dense or (parts / f"{i:06d}.npy").exists()) and (
                not sparse or (parts / f"{i:06d}.jsonl").exists()
            )

        todo = [i for i in range(len(batches)) if not done(i)]
        bar = tqdm(
            total=len(texts),
            initial=len(texts) - sum(len(batches[i]) for i in todo),
            unit="text",
            desc="embed",
            disable=args.quiet,
        )
        for i, res in zip(todo, client.embed_stream((batches[i] for i in todo), **opts)):
            if sparse:
                write_atomic(
                    parts / f"{i:06d}.jsonl", "".join(json.dumps(v) + "\n" for v in _sparse_json(res)).encode()
                )
            if dense:
                save_npy_atomic(parts / f"{i:06d}.npy", res.vectors)
            bar.update(len(batches[i]))
        bar.close()
        summary: dict[str, Any] = {}
        if dense:
            table = np.concatenate([np.load(parts / f"{i:06d}.npy") for i in range(len(batches))])
            save_npy_atomic(out, table)
            summary.update(out=str(out), shape=list(table.shape), dtype=str(table.dtype))
        if sparse_out is not None:
            tmp = sparse_out.with_name(sparse_out.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for i in range(len(batches)):
                    f.write((parts / f"{i:06d}.jsonl").read_text())
            tmp.replace(sparse_out)
            summary.update(sparse_out=str(sparse_out), texts=len(texts))
        for part in parts.iterdir():
            part.unlink()
        parts.rmdir()
        if args.json:
            print(json.dumps(summary))
        else:
            if dense:
                print(f"wrote {out} {tuple(summary['shape'])} {summary['dtype']}")
            if sparse_out is not None:
                print(f"wrote {sparse_out} ({len(texts)} sparse vectors: token ids and weights)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lodestar.services.client import ClientError

    with connect(args) as client:
        info = plain(client.info())
        info["health"] = client.health()
        try:
            info["compress"] = plain(client.compress_info())
        except ClientError as exc:  # a server started with --only embed,retrieve has no compression
            if exc.code != "UNIMPLEMENTED":
                raise
    if args.json:
        print(json.dumps(info))
        return 0
    print(
        f"model       {info['model']}  ({info['torch_dtype']} on {info['device']}, {info['num_layers']} layers, {info['runtime']} runtime)"
    )
    print(f"dimensions  {info['dimensions']}")
    print(f"max tokens  {info['max_tokens']} per text, {info['max_texts_per_request']} texts per request")
    print(f"modes       {', '.join(m['name'] for m in info['modes'])} (default {info['default_mode']})")
    print(f"adapters    {', '.join(info['adapters']) or '-'}")
    print(f"dtypes      {', '.join(info['dtypes'])}")
    print(f"health      {info['health']}   version {info['version']}")
    if "compress" in info:
        ci = info["compress"]
        print(
            f"compress    {', '.join(ci.get('methods', []))}; up to {ci.get('max_passages', 0)} passages, "
            f"{ci.get('max_input_tokens', 0)} tokens in, {ci.get('max_summary_tokens', 0)} summary tokens; "
            f"selective threshold {ci.get('threshold', 0):.3f} (mode {ci.get('default_mode', '')})"
        )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server (or one of its services) reports SERVING, 1 otherwise: the image's
    HEALTHCHECK and the chart's `helm test` pod (health checks need no token)."""
    from lodestar.services.client import ChannelConfig

    with connect(args, channel=ChannelConfig(retries=0, tls_server_name=args.tls_server_name)) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_eval_sts(args: argparse.Namespace) -> int:
    from lodestar.embed.eval.sts import eval_sts
    from lodestar.embed.types import EmbedOptions

    engine = local_engine(args)
    try:
        result = eval_sts(
            engine,
            Path(args.file),
            EmbedOptions(**embed_options(args)),
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    finally:
        engine.close()
    print(json.dumps(result))
    return 0


def cmd_bench_embed(args: argparse.Namespace) -> int:
    from lodestar.bench.served import bench_embed

    if args.edge:
        from lodestar.bench.edge import bench_edge_cost

        result = bench_edge_cost(
            texts=read_texts(Path(args.texts))[: args.limit or None],
            options=embed_options(args),
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            model=args.model,
            repeats=args.repeats,
        )
        write_result(result, args.out)
        return 0
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
    s = sub.add_parser(
        "serve",
        help="run the gRPC server (all services, bundled model by default)",
        description="Serve until SIGTERM/SIGINT (in-flight requests drain for LODESTAR_GRACE_PERIOD_S). "
        "Every option overrides its LODESTAR_* variable; the rest are read from the environment "
        "(docs/configuration.md lists them all).",
    )
    s.add_argument("--port", type=int, help="gRPC port (LODESTAR_PORT, default 50051; 0 picks a free one)")
    s.add_argument("--host", help="address to bind (LODESTAR_HOST, default 127.0.0.1; 0.0.0.0 for every interface)")
    s.add_argument(
        "--only",
        help="comma-separated services this process serves, of embed,retrieve,index,compress,generate "
        "(LODESTAR_ONLY, default all)",
    )
    s.add_argument(
        "--data-dir", help="where collections, jobs and datastores live (LODESTAR_DATA_DIR, default ./.lodestar)"
    )
    s.add_argument(
        "--model", help="bundled (SmolLM2-135M-Instruct), a Hugging Face model folder, or a .gguf file (LODESTAR_MODEL)"
    )
    s.add_argument(
        "--dtype",
        help="auto | float32 | bfloat16 | float16 (LODESTAR_DTYPE; auto: bf16 only where the "
        "hardware computes it natively)",
    )
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (LODESTAR_DEVICE)")
    s.add_argument(
        "--log-level", metavar="LEVEL", help="DEBUG | INFO | WARNING | ERROR (LODESTAR_LOG_LEVEL, default INFO)"
    )
    s.add_argument("--log-format", choices=["text", "json"], help="log lines as text or JSON (LODESTAR_LOG_FORMAT)")
    sec = s.add_argument_group("security (docs/security.md; unset: plaintext, every RPC open)")
    sec.add_argument(
        "--tls-cert", default=argparse.SUPPRESS, help="server certificate chain, PEM: TLS on (LODESTAR_TLS_CERT)"
    )
    sec.add_argument("--tls-key", default=argparse.SUPPRESS, help="its private key, PEM (LODESTAR_TLS_KEY)")
    sec.add_argument(
        "--tls-client-ca", help="require client certificates signed by this CA bundle: mTLS (LODESTAR_TLS_CLIENT_CA)"
    )
    sec.add_argument(
        "--tokens-file", help="bearer tokens and their scopes (`lodestar token create`) (LODESTAR_TOKENS_FILE)"
    )
    obs = s.add_argument_group("observability")
    obs.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (LODESTAR_METRICS_PORT)")
    obs.add_argument(
        "--otlp-endpoint", help="send OpenTelemetry spans here, e.g. http://collector:4317 (LODESTAR_OTLP_ENDPOINT)"
    )
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("embed", help="embed texts (arguments) or a file (jsonl with 'text', or one per line) into .npy")
    e.add_argument("texts", nargs="*")
    e.add_argument("--file", "-f")
    e.add_argument(
        "--out",
        "-o",
        help="output .npy (resumable: finished batches are kept in OUT.parts/); sparse vectors "
        "go to OUT with .sparse.jsonl for .npy, or to OUT itself with --no-dense",
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", action="store_true")
    e.add_argument("--quiet", action="store_true")
    add_embed_options(e)
    sp = e.add_argument_group(
        "learned-sparse output (SPLADE weights from the LM head: use --mode echo and a "
        "sparse adapter, e.g. --adapter sparse-squad)"
    )
    sp.add_argument(
        "--sparse", action="store_true", help="also return each text's sparse vector (token ids and weights)"
    )
    sp.add_argument("--no-dense", action="store_true", help="sparse vectors only (implies --sparse)")
    sp.add_argument("--sparse-top-k", type=int, default=0, help="weights kept per text (0: the server's 256)")
    sp.add_argument("--sparse-threshold", type=float, default=0.0, help="drop weights at or below this")
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="what the server offers (model, modes, adapters, limits; compression limits)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    h = sub.add_parser("health", help="exit 0 when the server reports SERVING (grpc.health.v1), else 1")
    h.add_argument(
        "--service", default="", help="one service, e.g. lodestar.embed.v1.EmbedService (default: the server)"
    )
    h.add_argument(
        "--tls-server-name",
        default="",
        help="the name the server's certificate carries, when --server is an address it does not (a probe on 127.0.0.1)",
    )
    h.set_defaults(func=cmd_health)

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
    be.add_argument(
        "--edge",
        action="store_true",
        help="instead: served throughput with TLS + token + metrics + access log on vs all off, interleaved "
        "(needs `cryptography`, in the test extra)",
    )
    be.add_argument("--repeats", type=int, default=5, help="--edge: runs of each side")
    be.add_argument("--out", help="also write the JSON here")
    add_embed_options(be)
    be.set_defaults(func=cmd_bench_embed)
