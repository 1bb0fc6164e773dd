"""Commands that train embedding adapters: train bidirectional, train sparse, adapt.

Every command takes flags or `--config FILE.json` (keys are the flags' names with underscores;
flags given on the command line win), a seed, and resumes from the checkpoints in --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import print_obj, settings


def _apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill flags left at their defaults from --config (JSON)."""
    if not args.config:
        return
    try:
        values = json.loads(Path(args.config).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LodestarError(f"cannot read --config {args.config}: {exc}") from None
    known = {a.dest: a.default for a in parser._actions}
    unknown = set(values) - set(known)
    if unknown:
        raise LodestarError(
            f"--config {args.config}: unknown keys {sorted(unknown)}; valid are {sorted(k for k in known if k != 'help')}"
        )
    for key, value in values.items():
        if getattr(args, key) == known[key]:
            setattr(args, key, value)


def _backbone(args: argparse.Namespace) -> Any:
    """A backbone of its own for training (LoRA layers are injected into it), fp32 by default."""
    from lodestar.backbone import BackboneConfig, load_backbone

    s = settings(model=args.model)
    return load_backbone(BackboneConfig(model=s.model, dtype=args.dtype, device=s.device, cache_dir=s.cache_dir))


def _run(args: argparse.Namespace) -> Any:
    from lodestar.embed.train.common import LoraSettings, RunSettings

    return RunSettings(
        out_dir=Path(args.out),
        seed=args.seed,
        eval_every=args.eval_every,
        patience=args.patience,
        resume=not args.restart,
        progress=not args.quiet,
        data_licence=args.data_licence or "",
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout),
    )


def _command() -> str:
    return "lodestar " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_train_bidirectional(args: argparse.Namespace) -> int:
    from lodestar.embed.train.bidirectional import BidirectionalConfig, train_bidirectional

    _apply_config(args, args._parser)
    cfg = BidirectionalConfig(
        run=_run(args),
        corpus=tuple(Path(p) for p in args.corpus or ()),
        pairs=Path(args.pairs) if args.pairs else None,
        triplets=Path(args.triplets) if args.triplets else None,
        dev_pairs=Path(args.dev_pairs) if args.dev_pairs else None,
        stages=tuple(args.stages.split(",")) if args.stages else (),
        mode=args.mode,
        max_tokens=args.max_tokens,
        max_sentences=args.max_sentences,
        mntp_steps=args.mntp_steps,
        simcse_steps=args.simcse_steps,
        supervised_steps=args.supervised_steps,
        mntp_batch=args.mntp_batch,
        simcse_batch=args.simcse_batch,
        supervised_batch=args.supervised_batch,
        mntp_lr=args.mntp_lr,
        simcse_lr=args.simcse_lr,
        supervised_lr=args.supervised_lr,
        init_adapter=Path(args.init_adapter) if args.init_adapter else None,
        simcse_dropout=args.simcse_dropout,
    )
    print_obj(train_bidirectional(_backbone(args), cfg, _command()), True)
    return 0


def cmd_train_sparse(args: argparse.Namespace) -> int:
    from lodestar.embed.train.sparse import SparseConfig, train_sparse

    _apply_config(args, args._parser)
    if not args.triplets:
        raise LodestarError("train sparse needs --triplets (jsonl {query, positive, negatives})")
    cfg = SparseConfig(
        run=_run(args),
        triplets=Path(args.triplets),
        mode=args.mode,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        lambda_q=args.lambda_q,
        lambda_d=args.lambda_d,
        max_tokens=args.max_tokens,
        init_adapter=Path(args.init_adapter) if args.init_adapter else None,
    )
    print_obj(train_sparse(_backbone(args), cfg, command=_command()), True)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from lodestar.embed.train.adapt import AdaptConfig, adapt

    _apply_config(args, args._parser)
    cfg = AdaptConfig(
        run=_run(args),
        corpus=Path(args.corpus),
        kinds=tuple(args.kinds.split(",")),
        passages=args.passages,
        queries=args.queries,
        dense_init=Path(args.dense_init) if args.dense_init else None,
        sparse_init=Path(args.sparse_init) if args.sparse_init else None,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
    )
    print_obj(adapt(lambda: _backbone(args), cfg, _command()), True)
    return 0


def _common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--out", required=out_required, help="output folder: adapter/, checkpoints, card.json, README.md")
    p.add_argument("--config", help="JSON file of these options (flags given here win)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=25, help="steps between dev evaluations (and checkpoints)")
    p.add_argument("--patience", type=int, default=4, help="evaluations without improvement before stopping early")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--data-licence", help="licence of the training data, written into the card")
    p.add_argument("--dtype", default="float32", help="training dtype of the base model (bf16 halves memory on GPU)")
    p.add_argument("--model")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(_parser=p)


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    t = groups["train"]
    b = t.add_parser(
        "bidirectional", help="LLM2Vec: MNTP -> SimCSE -> supervised (CoSENT / InfoNCE) LoRA, mode bidirectional"
    )
    _common(b)
    b.add_argument(
        "--corpus", action="append", help="text for mntp/simcse: .txt, .jsonl, .tsv or a BEIR folder (repeatable)"
    )
    b.add_argument("--pairs", help="scored pairs (STS TSV: sentence1, sentence2, score) for the supervised stage")
    b.add_argument("--triplets", help="jsonl {query, positive, negatives} for the supervised stage")
    b.add_argument("--dev-pairs", help="scored pairs for early stopping (default: 10%% held out of --pairs)")
    b.add_argument("--stages", help="comma-separated subset of mntp,simcse,supervised (default: what the data allows)")
    b.add_argument("--mode", default="bidirectional")
    b.add_argument("--max-tokens", type=int, default=64)
    b.add_argument("--max-sentences", type=int, default=20000)
    b.add_argument("--mntp-steps", type=int, default=300)
    b.add_argument("--simcse-steps", type=int, default=300)
    b.add_argument("--supervised-steps", type=int, default=400)
    b.add_argument("--mntp-batch", type=int, default=16)
    b.add_argument("--simcse-batch", type=int, default=32)
    b.add_argument("--supervised-batch", type=int, default=32)
    b.add_argument("--mntp-lr", type=float, default=2e-4)
    b.add_argument("--simcse-lr", type=float, default=1e-4)
    b.add_argument("--supervised-lr", type=float, default=1e-4)
    b.add_argument(
        "--simcse-dropout", type=float, default=0.1, help="attention dropout that makes SimCSE's two views differ"
    )
    b.add_argument("--init-adapter", help="start from this adapter folder")
    b.set_defaults(func=cmd_train_bidirectional)

    s = t.add_parser("sparse", help="decoder SPLADE: echo input, max-pooled LM-head weights, InfoNCE + FLOPS")
    _common(s)
    s.add_argument("--triplets", help="jsonl {query, positive, negatives}")
    s.add_argument("--mode", default="echo")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--lambda-q", type=float, default=5e-4, help="FLOPS weight on queries")
    s.add_argument("--lambda-d", type=float, default=3e-4, help="FLOPS weight on documents")
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--init-adapter")
    s.set_defaults(func=cmd_train_sparse)

    a = sub.add_parser(
        "adapt", help="adapt dense and/or sparse adapters to your corpus with synthetic queries (no labels)"
    )
    _common(a)
    a.add_argument("--corpus", required=True, help="BEIR folder or jsonl {id, title?, text}")
    a.add_argument("--kinds", default="dense,sparse", help="dense, sparse or both")
    a.add_argument("--passages", type=int, default=800, help="passages sampled (one synthetic query each)")
    a.add_argument(
        "--queries",
        default="generate",
        help="pseudo-queries: written by the backbone (generate) or the documents' own titles (title)",
    )
    a.add_argument("--dense-init", help="continue this dense adapter (e.g. adapters/<name>/adapter)")
    a.add_argument("--sparse-init", help="continue this sparse adapter")
    a.add_argument("--steps", type=int, default=200)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--lr", type=float, default=1e-4)
    a.set_defaults(func=cmd_adapt)
