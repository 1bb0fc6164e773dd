"""Commands of context compression: compress (through a server), eval compress, train compressor."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import add_result_args, connect, print_obj, settings


def _passages(args: argparse.Namespace) -> list[str]:
    """--passage arguments, then the lines (or jsonl `text` fields) of --passages-file."""
    from lodestar.services.cli.common import read_texts

    out = list(args.passage or [])
    if args.passages_file:
        out += read_texts(Path(args.passages_file))
    if not out:
        raise LodestarError("no passages: give --passage TEXT (repeatable) or --passages-file FILE")
    return out


def cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    abstractive = args.method == "abstractive"
    scorer_adapter = None if abstractive else args.adapter
    scorer = {
        k: v
        for k, v in (
            ("mode", args.mode),
            ("adapter", scorer_adapter),
            ("instruction", args.instruction),
            ("prompt", args.prompt),
        )
        if v
    }
    query_side = {
        k: v
        for k, v in (
            ("mode", args.query_mode),
            ("prompt", args.query_prompt),
            ("instruction", args.query_instruction),
            ("adapter", args.query_adapter),
        )
        if v
    }
    with connect(args, timeout=600) as c:
        res = c.compress(
            args.query,
            _passages(args),
            method=args.method,
            budget_tokens=args.budget_tokens,
            budget_ratio=args.budget_ratio,
            top_n=args.top_n,
            order=args.order,
            selective=args.selective,
            threshold=args.threshold,
            max_new_tokens=args.max_new_tokens,
            sentence_options=scorer or None,
            adapter=args.adapter if abstractive else None,
            query_options=query_side or None,
        )
    if args.json:
        print(json.dumps(asdict(res) | {"compression_rate": res.compression_rate}))
        return 0
    print(res.text if res.text else f"(no context: {res.reason})")
    print(
        f"-- {res.method}, {res.decision}: {res.tokens_before} -> {res.tokens_after} tokens "
        f"({res.compression_rate:.1%}); {res.reason}",
        flush=True,
    )
    return 0


def _backbone_and_embedder(args: argparse.Namespace) -> tuple[Any, Any]:
    from lodestar.services.cli.common import local_engine

    embedder = local_engine(args)
    return embedder.backbone, embedder


def cmd_eval_compress(args: argparse.Namespace) -> int:
    from lodestar.compress_ctx.eval.qa import eval_compress
    from lodestar.embed.types import EmbedOptions

    backbone, embedder = _backbone_and_embedder(args)
    try:
        out = eval_compress(
            backbone,
            embedder,
            Path(args.qa),
            Path(args.corpus),
            k=args.k,
            method=args.method,
            n=args.n,
            calibration=args.calibration,
            seed=args.seed,
            retriever=args.retriever,
            budget_ratio=args.budget_ratio,
            budget_tokens=args.budget_tokens,
            threshold=args.threshold,
            max_new_tokens=args.max_new_tokens,
            adapter=args.adapter or "",
            progress=not args.quiet,
            options=EmbedOptions(mode="prompteol", adapter=args.scorer_adapter) if args.scorer_adapter else None,
        )
    finally:
        embedder.close()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, args.out)
    print(json.dumps(out))
    return 0


def cmd_train_compressor(args: argparse.Namespace) -> int:
    from lodestar.backbone import BackboneConfig, load_backbone
    from lodestar.compress_ctx.train.extractive import TrainConfig, train_compressor

    s = settings(model=args.model)
    # Training injects LoRA layers into the model it is given: a backbone of its own, in fp32.
    backbone = load_backbone(BackboneConfig(model=s.model, dtype=args.dtype, device=s.device, cache_dir=s.cache_dir))
    config = TrainConfig(
        qa_file=Path(args.qa),
        corpus=Path(args.corpus),
        out_dir=Path(args.out),
        kind=args.kind,
        questions=args.questions,
        k=args.k,
        mode=args.mode,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        lora_r=args.lora_r,
        batch_questions=args.batch_questions,
        patience=args.patience,
        resume=not args.restart,
        progress=not args.quiet,
        summary_tokens=args.summary_tokens,
        min_gain=args.min_gain,
    )
    card = train_compressor(backbone, config)
    print_obj(card, True)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    ev, tsub = groups["eval"], groups["train"]
    cp = sub.add_parser("compress", help="compress passages for a query (RECOMP extractive/abstractive)")
    cp.add_argument("query")
    cp.add_argument("--passage", "-p", action="append", help="a passage (repeatable)")
    cp.add_argument("--passages-file", help="one passage per line, or jsonl with 'text'")
    cp.add_argument("--method", default="extractive", help="extractive | abstractive")
    cp.add_argument("--budget-tokens", type=int, help="extractive: keep at most this many tokens")
    cp.add_argument("--budget-ratio", type=float, help="extractive: keep at most this share of the tokens (0, 1]")
    cp.add_argument("--top-n", type=int, help="extractive: keep at most this many sentences")
    cp.add_argument("--order", default="original", help="original | score")
    cp.add_argument("--selective", action="store_true", help="return nothing when the passages do not help")
    cp.add_argument("--threshold", type=float, help="selective: score cut (default: the server's calibrated one)")
    cp.add_argument("--max-new-tokens", type=int, help="abstractive: summary length bound")
    cp.add_argument("--mode", help="extractive scorer: embedding mode (default prompteol)")
    cp.add_argument(
        "--adapter",
        help="LoRA adapter trained by `lodestar train compressor`: the extractive scorer's, or "
        "with --method abstractive the summariser's",
    )
    cp.add_argument("--instruction", help="extractive scorer: instruction")
    cp.add_argument("--prompt", help="extractive scorer: prompt template with {text}")
    q = cp.add_argument_group("extractive scorer, query side (default: as the sentences)")
    q.add_argument("--query-mode")
    q.add_argument("--query-prompt")
    q.add_argument("--query-instruction")
    q.add_argument("--query-adapter")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compress)

    ec = ev.add_parser(
        "compress", help="retrieve -> compress -> read on a QA set: compression rate, answer kept, EM/F1"
    )
    ec.add_argument("--qa", required=True, help="jsonl {id, question, answers} (e.g. DATA_DIR/squad/qa.jsonl)")
    ec.add_argument("--corpus", required=True, help="BEIR folder the passages are retrieved from")
    ec.add_argument("--k", type=int, default=5)
    ec.add_argument("--method", default="extractive", help="extractive | abstractive")
    ec.add_argument("--n", type=int, default=200, help="questions evaluated")
    ec.add_argument(
        "--calibration", type=int, default=100, help="further questions calibrating the selective threshold"
    )
    ec.add_argument("--seed", type=int, default=0)
    ec.add_argument("--retriever", default="bm25", help="bm25 | dense | hybrid")
    ec.add_argument("--budget-ratio", type=float, default=0.15)
    ec.add_argument("--budget-tokens", type=int)
    ec.add_argument("--threshold", type=float, help="selective threshold (skips calibration)")
    ec.add_argument("--max-new-tokens", type=int, help="abstractive summary bound")
    ec.add_argument(
        "--adapter", help="abstractive: summariser adapter (`lodestar train compressor --kind abstractive`)"
    )
    ec.add_argument("--scorer-adapter", help="extractive: scorer adapter (`lodestar train compressor`), prompteol mode")
    add_result_args(ec)
    ec.set_defaults(func=cmd_eval_compress)

    tc = tsub.add_parser("compressor", help="RECOMP extractive scorer: label by reader gain, LoRA InfoNCE (resumable)")
    tc.add_argument("--kind", default="extractive", help="extractive (sentence scorer) | abstractive (summariser)")
    tc.add_argument("--summary-tokens", type=int, default=64, help="abstractive: summary length while labelling")
    tc.add_argument(
        "--min-gain", type=float, default=0.1, help="abstractive: a summary is kept when it beats closed-book by this"
    )
    tc.add_argument("--qa", required=True)
    tc.add_argument("--corpus", required=True)
    tc.add_argument("--out", required=True, help="output folder: adapter/, checkpoints, labels.jsonl, card")
    tc.add_argument("--questions", type=int, default=200)
    tc.add_argument("--k", type=int, default=5)
    tc.add_argument("--mode", default="prompteol")
    tc.add_argument("--epochs", type=int, default=3)
    tc.add_argument("--lr", type=float, default=2e-4)
    tc.add_argument("--lora-r", type=int, default=8)
    tc.add_argument("--batch-questions", type=int, default=4)
    tc.add_argument("--patience", type=int, default=3)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--dtype", default="float32")
    tc.add_argument("--model")
    tc.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    tc.add_argument("--quiet", action="store_true")
    tc.set_defaults(func=cmd_train_compressor)
