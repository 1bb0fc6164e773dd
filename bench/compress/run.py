"""Context-compression benchmark: `python bench/compress/run.py --qa QA.jsonl --corpus BEIR_DIR`.

For each method asked for (extractive, abstractive) runs `eval_compress` on a seeded sample of
questions and writes bench/results/compress_<method>.json (the whole result dict, plus the command
line and wall time). The model is the bundled SmolLM2-135M unless --model says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qa", type=Path, required=True, help="SQuAD-style jsonl, e.g. DATA_DIR/squad/qa.jsonl")
    p.add_argument("--corpus", type=Path, required=True, help="its BEIR corpus, e.g. DATA_DIR/squad/beir")
    p.add_argument("--methods", default="extractive,abstractive", help="comma-separated: extractive,abstractive")
    p.add_argument("--n", type=int, default=150, help="questions evaluated per method")
    p.add_argument("--calibration", type=int, default=100, help="further questions to calibrate the threshold")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--retriever", default="bm25", choices=("bm25", "dense", "hybrid"))
    p.add_argument("--budget-ratio", type=float, default=0.15)
    p.add_argument("--budget-tokens", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None, help="skip calibration and use this threshold")
    p.add_argument("--summary-tokens", type=int, default=64)
    p.add_argument("--model", default="bundled")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from lodestar.backbone import BackboneConfig, load_backbone
    from lodestar.compress_ctx.engine import CompressionEngine
    from lodestar.compress_ctx.eval.qa import eval_compress
    from lodestar.embed.engine import EmbeddingEngine

    cache = Path(os.environ.get("LODESTAR_CACHE_DIR", Path.home() / ".cache" / "lodestar"))
    backbone = load_backbone(BackboneConfig(model=args.model, dtype=args.dtype, cache_dir=cache))
    embedder = EmbeddingEngine(backbone)
    engine = CompressionEngine(backbone, embedder)
    args.results.mkdir(parents=True, exist_ok=True)
    try:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            t0 = time.perf_counter()
            out = eval_compress(
                backbone,
                embedder,
                args.qa,
                args.corpus,
                k=args.k,
                method=method,
                n=args.n,
                calibration=args.calibration,
                seed=args.seed,
                retriever=args.retriever,
                budget_ratio=args.budget_ratio,
                budget_tokens=args.budget_tokens,
                threshold=args.threshold,
                max_new_tokens=args.summary_tokens,
                engine=engine,
                progress=not args.quiet,
            )
            out["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            path = args.results / f"compress_{method}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(out, indent=2) + "\n")
            os.replace(tmp, path)
            summary = {
                key: out[key]
                for key in ("compression_rate", "answer_in_context_kept", "no_context", "full", "compressed")
            }
            summary["selective"] = out.get("selective")
            summary["timing"] = out["timing"]
            print(f"{method}: {json.dumps(summary)}\n  -> {path}", flush=True)
    finally:
        embedder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
