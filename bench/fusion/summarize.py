"""Summarise `lodestar eval beir` runs of the fusion grid (issue 32): per data set, BM25, dense, hybrid
RRF, weighted alpha 0.5, DBSF 0.5, auto (what calibration picked, without labels) and the best setting
chosen with the labels (over rrf and weighted/DBSF alpha 0.0..1.0), the gap auto leaves to it, and
whether auto holds the target (auto >= the better side - 0.005 nDCG@10).

    python bench/fusion/summarize.py bench/results/fusion_mean_*.jsonl --out bench/results/fusion_summary.json

Input: the JSON lines `lodestar eval beir DIR --retriever dense,bm25,hybrid --fusion auto,rrf,weighted,dbsf
--alpha 0.0,0.1,...,1.0` prints (one file per set and model setting).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TOLERANCE = 0.005


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One set's rows -> its summary."""
    by: dict[str, float] = {}
    auto: dict[str, Any] = {}
    for r in rows:
        if r["retriever"] != "hybrid":
            by[r["retriever"]] = r["ndcg@10"]
            continue
        name = r["fusion"] if r["fusion"] in ("rrf", "auto") else f"{r['fusion']}:{r['alpha']:.1f}"
        by[name] = r["ndcg@10"]
        if r["fusion"] == "auto":
            auto = r["calibration"] or {}
    sparse = by.get("bm25", by.get("sparse", 0.0))
    better = max(by.get("dense", 0.0), sparse)
    grid = {k: v for k, v in by.items() if k == "rrf" or ":" in k}
    best = max(grid, key=lambda k: grid[k]) if grid else ""
    first = rows[0]
    return {
        "dataset": first["dataset"],
        "mode": first["mode"],
        "adapter": first.get("adapter"),
        "sparse": "bm25" if "bm25" in by else first.get("sparse"),
        "sparse_adapter": first.get("sparse_adapter"),
        "queries": first["queries"],
        "documents": first["documents"],
        "dense": by.get("dense"),
        "sparse_ndcg": sparse,
        "rrf": by.get("rrf"),
        "weighted_0.5": by.get("weighted:0.5"),
        "dbsf_0.5": by.get("dbsf:0.5"),
        "auto": by.get("auto"),
        "auto_picked": auto.get("choice"),
        "auto_fallback": auto.get("fallback"),
        "auto_pseudo_queries": auto.get("pseudo_queries"),
        "auto_evidence": {k: auto.get(k) for k in ("chosen", "best_held_out", "dense_alone", "sparse_alone")},
        "calibrate_s": auto.get("calibrate_s"),
        "best_with_labels": {"setting": best, "ndcg@10": grid.get(best)},
        "gap_to_best": round(grid[best] - by["auto"], 4) if best and "auto" in by else None,
        "target_met": by.get("auto", 0.0) >= better - TOLERANCE,
        "auto_minus_better_side": round(by.get("auto", 0.0) - better, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out")
    args = p.parse_args()
    out = []
    for f in args.files:
        rows = [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
        if rows:
            out.append({"file": Path(f).name, **summarise(rows)})
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for s in out:
        print(
            f"| {s['dataset']} | {s['mode']}{' + ' + s['adapter'] if s['adapter'] else ''} | {s['sparse_ndcg']:.3f} | "
            f"{s['dense']:.3f} | {s['rrf']:.3f} | {s['weighted_0.5']:.3f} | {s['dbsf_0.5']:.3f} | **{s['auto']:.3f}** "
            f"({s['auto_picked']['fusion']} {s['auto_picked']['alpha']}) | {s['best_with_labels']['ndcg@10']:.3f} "
            f"({s['best_with_labels']['setting']}) | {s['auto_minus_better_side']:+.3f} |"
        )


if __name__ == "__main__":
    main()
