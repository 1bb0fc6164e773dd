"""Commands of generation: generate and answer (streamed from a server), datastore build/add/list,
eval specdec."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import add_result_args, connect, plain, print_obj, settings, write_result


def _decoding(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop or (),
        "datastore": args.datastore or "",
    }
    if args.no_speculative:
        out["speculative"] = False
    if args.self_draft_layers:
        out["self_draft_layers"] = args.self_draft_layers
    return {k: v for k, v in out.items() if v is not None}


def _add_decoding(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, help="0 (default) = greedy; > 0 samples")
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, help="sampling: the same seed gives the same text")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--datastore", help="server datastore to draft from (default: the server's default)")
    g.add_argument("--no-speculative", action="store_true", help="plain decoding, one token per forward")
    g.add_argument(
        "--self-draft-layers",
        type=int,
        default=0,
        help="also draft from the model's first N layers (early exit); 0 = off",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming text")


def _stream_out(items: Iterator[Any], as_json: bool, head: dict[str, Any] | None = None) -> int:
    """Print text as it arrives (or one JSON object at the end); the last chunk's stats go to stderr."""
    text: list[str] = []
    last: Any = None
    for c in items:
        text.append(c.text)
        last = c
        if not as_json:
            sys.stdout.write(c.text)
            sys.stdout.flush()
    stats = plain(last.stats if last is not None else None) or {}
    finish = last.finish_reason if last is not None else ""
    if as_json:
        print(json.dumps({**(head or {}), "text": "".join(text), "finish_reason": finish, "stats": stats}))
    else:
        print()
        print(
            f"-- {finish}: {stats.get('generated_tokens', 0)} tokens, {stats.get('tokens_per_s', 0)} tok/s, "
            f"{stats.get('mean_accepted_tokens', 0)} tokens per forward",
            file=sys.stderr,
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:

    passages = list(args.passage or [])
    with connect(args, timeout=None) as c:
        chunks = c.generate_stream(args.prompt, passages=passages, chat=args.chat, **_decoding(args))
        return _stream_out(chunks, args.json)


def cmd_answer(args: argparse.Namespace) -> int:
    from lodestar.services.cli.retrieve_cmds import parse_filter
    from lodestar.services.client import AnswerContext

    filters = [parse_filter(f) for f in args.filter or []]
    with connect(args, timeout=None) as c:
        items = iter(
            c.answer_stream(
                args.question,
                args.collection,
                k=args.k,
                retriever=args.retriever or "",
                filters=filters,
                compression=args.compression or "",
                budget_tokens=args.budget_tokens,
                selective=args.selective,
                fusion=args.fusion or "",
                alpha=args.alpha,
                rrf_k=args.rrf_k,
                threshold=args.threshold,
                feedback_chunks=args.feedback,
                feedback_weight=args.feedback_weight,
                length_norm=args.length_norm,
                **_decoding(args),
            )
        )
        head = next(items)
        assert isinstance(head, AnswerContext)
        sources: list[dict[str, Any]] = [
            {"id": h.id, "score": round(h.score, 4), "chunk": h.chunk} for h in head.sources
        ]
        if not args.json:
            print(
                f"-- sources: {', '.join(s['id'] for s in sources) or 'none'}; context {head.decision}, "
                f"{head.passage_tokens} -> {head.context_tokens} tokens",
                file=sys.stderr,
            )
        info = {"sources": sources, "context": head.context, "decision": head.decision}
        return _stream_out(items, args.json, info)


# --- datastores ----------------------------------------------------------------------------------


def _texts(args: argparse.Namespace) -> Iterator[str]:
    from lodestar.generate.corpus import iter_texts

    return iter_texts(args.input, pattern=args.pattern, field=args.field, exclude=args.exclude or ())


def _resumable_upload(
    args: argparse.Namespace, progress_file: Path, write: Callable[[list[str]], Any], documents: Callable[[], int]
) -> dict[str, Any]:
    """Send the input texts in batches to `write`; `progress_file` keeps the count of texts done, so
    a rerun with the same inputs skips them. Before each batch it also notes the batch and the
    document count the datastore will have after it (`documents()` reads the count): a run stopped
    between the write and the note finds that count on rerun and skips the batch instead of adding
    it twice."""
    from tqdm import tqdm

    key = {"input": [str(Path(p).resolve()) for p in args.input], "pattern": args.pattern, "field": args.field}
    state = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    have = documents()
    skip = 0
    if state.get("key") == key:
        pending = state.get("pending") or {}
        skip = pending["done"] if pending and have == pending["documents"] else state.get("done", 0)
    done = 0
    batch: list[str] = []
    bar = tqdm(desc="datastore", unit="text", initial=skip, disable=args.quiet)
    last: Any = None

    def note(**state: Any) -> None:
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **state}))
        os.replace(tmp, progress_file)

    def flush() -> None:
        nonlocal batch, last, have
        if batch:
            note(done=done - len(batch) - blanks, pending={"done": done, "documents": have + len(batch)})
            last = write(batch)
            have += len(batch)
            bar.update(len(batch))
            batch = []
        note(done=done)

    blanks = 0  # blank texts read since the last flush (counted in `done`, never written)
    for text in _texts(args):
        done += 1
        if done <= skip:
            continue
        if not text.strip():
            blanks += 1
            continue
        batch.append(text)
        if len(batch) >= args.batch:
            flush()
            blanks = 0
    flush()
    bar.close()
    return {"texts": done, "resumed_after": skip, "last": last}


def cmd_datastore(args: argparse.Namespace) -> int:
    if args.action == "list":
        with connect(args) as c:
            stores = c.list_datastores()
        if args.json:
            print(json.dumps(plain(stores)))
        for d in [] if args.json else stores:
            print(
                f"{d.name:20} {d.tokens:>12} tokens {d.documents:>9} docs {d.segments:>3} segments"
                f"{'  (default)' if d.is_default else ''}  {d.path}"
            )
        return 0
    if args.name:  # on the server, by name
        progress = Path(f".lodestar-datastore-{args.name}.progress")
        with connect(args, timeout=None) as c:
            run = _resumable_upload(
                args,
                progress,
                lambda texts: c.add_to_datastore(args.name, texts),
                lambda: next((d.documents for d in c.list_datastores() if d.name == args.name), 0),
            )
            info = c.add_to_datastore(args.name, [], compact=True) if args.compact else run["last"]
        progress.unlink(missing_ok=True)
        print_obj({"name": args.name, **(plain(info) or {}), "resumed_after": run["resumed_after"]}, args.json)
        return 0
    return _local_datastore(args)


def _local_datastore(args: argparse.Namespace) -> int:
    """Build (or, with `add`, extend) a datastore folder here with the model's tokenizer."""
    from lodestar.backbone import BackboneConfig
    from lodestar.backbone.loader import load_tokenizer
    from lodestar.generate.datastore import MANIFEST, Datastore

    if not args.out:
        raise LodestarError("give --out PATH (a datastore folder here) or --name NAME (a datastore on the server)")
    out = Path(args.out)
    progress = out.with_name(out.name + ".progress")
    s = settings(model=args.model)
    tokenizer = load_tokenizer(BackboneConfig(model=s.model, cache_dir=s.cache_dir))
    exists = (out / MANIFEST).is_file()
    if args.action == "build" and exists and not progress.is_file():
        raise LodestarError(f"{out} already holds a datastore: use `lodestar datastore add` to extend it, or remove it")
    if args.action == "add" and not exists:
        raise LodestarError(f"no datastore at {out}: build one first")
    store = Datastore.load(out, tokenizer) if exists else None

    def write(texts: list[str]) -> None:
        nonlocal store
        if store is None:
            store = Datastore.build(out, texts, tokenizer)
        else:
            store.add(texts)

    run = _resumable_upload(args, progress, write, lambda: store.num_docs if store is not None else 0)
    if store is None:
        raise LodestarError("the input holds no text")
    if args.action == "build" or args.compact:
        store.compact()
    progress.unlink(missing_ok=True)
    print_obj(
        {
            "path": str(out),
            "tokens": store.num_tokens,
            "documents": store.num_docs,
            "segments": len(store.segments),
            "texts_read": run["texts"],
            "resumed_after": run["resumed_after"],
        },
        args.json,
    )
    return 0


# --- evaluation ----------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """jsonl rows with `prompt` (and optional `passages`), or `question` (a RAG prompt is built)."""
    from lodestar.jsonl import read_jsonl

    rows = []
    for n, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt", row.get("question")), str):
            raise LodestarError(f"{path}:{n}: each line needs a string 'prompt' (or 'question')")
        rows.append(row)
    if not rows:
        raise LodestarError(f"{path} holds no prompt")
    return rows


def cmd_eval_specdec(args: argparse.Namespace) -> int:
    import torch

    from lodestar.backbone import BackboneConfig, load_backbone
    from lodestar.generate.datastore import Datastore
    from lodestar.generate.eval.specdec import eval_specdec
    from lodestar.generate.prompts import rag_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings(model=args.model)
    backbone = load_backbone(BackboneConfig(model=s.model, dtype=args.dtype, device=s.device, cache_dir=s.cache_dir))
    rows = read_prompts(Path(args.prompts))[: args.n or None]
    store = Datastore.load(args.datastore, backbone.tokenizer) if args.datastore else None
    passages: list[list[str] | None] = [row.get("passages") for row in rows]
    if args.passages_from:
        from lodestar.compress_ctx.eval.qa import retrieve

        queries = [row.get("question") or row["prompt"] for row in rows]
        found = retrieve(None, Path(args.passages_from), queries, args.k, "bm25", "")
        passages = [list(p or []) + f for p, f in zip(passages, found)]
    prompts, chat = [], args.chat
    for row, ps in zip(rows, passages):
        if "prompt" in row:
            prompts.append(row["prompt"])
        else:  # a question: answer it from its passages, through the chat template
            prompts.append(rag_prompt(row["question"], "\n\n".join(ps or [])))
            chat = True
    res = eval_specdec(
        backbone,
        prompts,
        store,
        passages if any(passages) else None,
        args.max_new_tokens,
        chat,
        progress=not args.quiet,
        self_draft_layers=args.self_draft_layers,
    )
    res.update(
        model=backbone.model_id,
        torch_dtype=str(backbone.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        datastore=str(args.datastore or ""),
        passages_from=str(args.passages_from or ""),
    )
    if not args.per_prompt:
        res.pop("per_prompt")
    write_result(res, args.out)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    g = sub.add_parser("generate", help="stream a continuation (retrieval-augmented speculative decoding)")
    g.add_argument("prompt")
    g.add_argument(
        "--passage", "-p", action="append", help="draft from this text too (repeatable; not put in the prompt)"
    )
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    _add_decoding(g, 128)
    g.set_defaults(func=cmd_generate)

    a = sub.add_parser("answer", help="retrieve from a collection, compress, answer with drafts from the passages")
    a.add_argument("question")
    a.add_argument("--collection", "-c", required=True)
    a.add_argument("-k", type=int, default=5)
    a.add_argument("--retriever", help="dense | sparse | hybrid (default hybrid, dense without a sparse side)")
    a.add_argument("--filter", action="append", help="FIELD=VALUE, FIELD>=N, FIELD in [..]; repeatable (AND)")
    a.add_argument("--compression", help="extractive (default) | abstractive | none")
    a.add_argument("--budget-tokens", type=int)
    a.add_argument("--selective", action="store_true", help="answer closed-book when the passages do not help")
    a.add_argument(
        "--threshold", type=float, help="selective: skip below this best sentence score (default: calibrated)"
    )
    a.add_argument(
        "--fusion", help="hybrid: auto (default: the collection's calibrated choice) | rrf | weighted | dbsf"
    )
    a.add_argument("--alpha", type=float, help="weighted or dbsf fusion: weight of dense (0..1; weighted default 0.15)")
    a.add_argument("--rrf-k", type=int, help="rrf fusion: the k in 1 / (k + rank) (default 60)")
    a.add_argument(
        "--feedback",
        type=int,
        default=0,
        metavar="N",
        help="learned sparse: pseudo-relevance feedback from the first ranking's top N chunks (0 = off)",
    )
    a.add_argument("--feedback-weight", type=float, help="weight of the feedback chunks' mean (default 1)")
    a.add_argument("--length-norm", type=float, metavar="B", help="learned sparse: chunk length normalisation (0..1)")
    _add_decoding(a, 64)
    a.set_defaults(func=cmd_answer)

    ds = sub.add_parser("datastore", help="token datastores that drafts come from")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    for action, text in (
        ("build", "build a datastore from files, folders or jsonl (resumable)"),
        ("add", "append texts to a datastore (one new segment per batch)"),
    ):
        b = ds_sub.add_parser(action, help=text)
        b.add_argument("--input", nargs="+", required=True, help="files, folders (recursively) or .jsonl files")
        b.add_argument("--out", help="datastore folder here (uses the model's tokenizer)")
        b.add_argument("--name", help="instead of --out: a datastore on the server, by name")
        b.add_argument("--pattern", default="**/*", help="glob for files inside folders (e.g. '**/*.py')")
        b.add_argument("--field", default="text", help="jsonl field holding the text")
        b.add_argument("--exclude", action="append", help="folder or file names to skip (repeatable)")
        b.add_argument("--batch", type=int, default=2000, help="texts per segment / upload")
        b.add_argument("--compact", action="store_true", help="merge segments into one at the end (build always does)")
        b.add_argument("--model")
        b.add_argument("--quiet", action="store_true")
    ds_sub.add_parser("list", help="datastores the server offers")
    for p in ds_sub.choices.values():
        p.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_datastore)

    es = groups["eval"].add_parser(
        "specdec", help="plain vs speculative greedy on the same prompts: speedup, identical"
    )
    es.add_argument("--prompts", required=True, help="jsonl with 'prompt' (optional 'passages'), or 'question'")
    es.add_argument("--datastore", help="datastore folder to draft from")
    es.add_argument("--passages-from", help="BEIR folder: draft also from each prompt's top-k BM25 passages")
    es.add_argument("--k", type=int, default=1, help="passages retrieved per prompt with --passages-from")
    es.add_argument("--max-new-tokens", type=int, default=128)
    es.add_argument("--n", type=int, default=0, help="only the first N prompts")
    es.add_argument("--chat", action="store_true", help="wrap prompts with the chat template")
    es.add_argument("--dtype", default="float32", help="float32 keeps greedy speculative output identical")
    es.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    es.add_argument(
        "--self-draft-layers",
        type=int,
        default=0,
        help="speculative runs also draft from the model's first N layers (early exit); 0 = off",
    )
    es.add_argument("--model")
    es.add_argument("--per-prompt", action="store_true", help="include every prompt's figures")
    add_result_args(es, model=False)
    es.set_defaults(func=cmd_eval_specdec)
