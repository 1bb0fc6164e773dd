"""Speculative decoding benchmark: plain vs speculative greedy on code completion and SQuAD RAG.

    python bench/specdec/run.py --squad DATA_DIR/squad/qa.jsonl [--stdlib DIR] [--code-src DIR ...]

Writes bench/results/specdec_code.json and bench/results/specdec_rag.json (atomically, when each
workload finishes). The code datastore (stdlib source) is built once into --datastore-dir and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from lodestar.backbone import BackboneConfig, load_backbone
from lodestar.generate.datastore import Datastore
from lodestar.generate.decoder import DecoderConfig
from lodestar.generate.drafter import DraftConfig
from lodestar.generate.eval.specdec import eval_specdec
from lodestar.generate.eval.workloads import code_corpus, code_workload, rag_corpus, rag_workload, stdlib_dir

ROOT = Path(__file__).resolve().parents[2]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def open_or_build(folder: Path, texts_fn: Any, tokenizer: Any) -> tuple[Datastore, float]:
    """Load the datastore at `folder`, or build it from texts_fn() when absent; -> (store, build seconds)."""
    if (folder / "manifest.json").is_file():
        return Datastore.load(folder, tokenizer), 0.0
    t = time.perf_counter()
    store = Datastore.build(folder, texts_fn(), tokenizer)
    return store, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", type=Path, required=True, help="SQuAD-style jsonl, e.g. DATA_DIR/squad/qa.jsonl")
    ap.add_argument("--stdlib", type=Path, default=stdlib_dir(), help="Python source for the code datastore")
    ap.add_argument(
        "--code-src",
        type=Path,
        nargs="*",
        default=None,
        help="folders of held-out Python code for prompts (default: requests, flask, ... in site-packages)",
    )
    ap.add_argument("--datastore-dir", type=Path, default=Path.home() / ".cache/lodestar/datastores")
    ap.add_argument("--workloads", nargs="+", default=["code", "rag"], choices=["code", "rag"])
    ap.add_argument("--n-code", type=int, default=12)
    ap.add_argument("--n-rag", type=int, default=16)
    ap.add_argument("--code-tokens", type=int, default=128)
    ap.add_argument("--rag-tokens", type=int, default=64)
    ap.add_argument("--max-nodes", type=int, default=None, help="draft tree budget (default: DraftConfig's)")
    ap.add_argument(
        "--shared",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also draft from the sources shared across requests (output history, token recycling); off by default, as in the server",
    )
    ap.add_argument("--self-draft-layers", type=int, default=0, help="add early-exit self-drafts from N layers")
    ap.add_argument("--tag", default="", help="suffix of the result files: specdec_<workload><tag>.json")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads; 0 (default) = torch's default (one per core)"
    )
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(BackboneConfig(model=args.model, dtype=args.dtype))
    draft = DraftConfig() if args.max_nodes is None else replace(DraftConfig(), max_nodes=args.max_nodes)
    draft = replace(draft, history=args.shared, recycle=args.shared)
    config = DecoderConfig(draft=draft)
    env = {
        "model": backbone.model_id,
        "torch_dtype": str(backbone.dtype).removeprefix("torch."),
        "device": str(backbone.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "draft_config": asdict(draft),
    }

    def run(name: str, folder: Path, source: Path, store: Datastore, built_s: float, work: Any, target: float) -> None:
        print(f"== {name}: {len(work.prompts)} prompts, datastore {store}", file=sys.stderr)
        res = eval_specdec(
            backbone,
            work.prompts,
            store,
            work.passages,
            work.max_new_tokens,
            work.chat,
            config,
            progress=not args.quiet,
            self_draft_layers=args.self_draft_layers,
        )
        res.update(
            env,
            workload=name,
            datastore={
                "path": str(folder),
                "tokens": store.num_tokens,
                "docs": store.num_docs,
                "source": str(source),
                "build_s": round(built_s, 2),
            },
            prompts=work.info,
            target_speedup=target,
        )
        write_json(args.results / f"specdec_{name}{args.tag}.json", res)
        print(
            json.dumps(
                {
                    k: res[k]
                    for k in (
                        "speedup",
                        "decode_speedup",
                        "identical",
                        "mean_accepted_tokens",
                        "plain_tokens_per_s",
                        "spec_tokens_per_s",
                    )
                }
            )
        )

    if "code" in args.workloads:
        folder = args.datastore_dir / "code-stdlib"
        store, built_s = open_or_build(folder, lambda: code_corpus(args.stdlib), backbone.tokenizer)
        corpus_text = "\n".join(code_corpus(args.stdlib))
        work = code_workload(args.code_src, n=args.n_code, max_new_tokens=args.code_tokens, corpus_text=corpus_text)
        del corpus_text
        run("code", folder, args.stdlib, store, built_s, work, 2.0)

    if "rag" in args.workloads:
        folder = args.datastore_dir / "rag-squad"
        store, built_s = open_or_build(folder, lambda: rag_corpus(args.squad), backbone.tokenizer)
        run(
            "rag",
            folder,
            args.squad,
            store,
            built_s,
            rag_workload(args.squad, n=args.n_rag, max_new_tokens=args.rag_tokens),
            1.5,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
