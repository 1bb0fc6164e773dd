"""SQuAD questions -> retrieval triplets for `lodestar train sparse` / `train bidirectional --triplets`.

    python bench/adapters/squad_triplets.py ../shared/data/squad/qa.jsonl out.jsonl [--exclude-titles T1,T2]

Each answerable question becomes {query, positive: its paragraph, negatives: [the best BM25
paragraph that is not its own]}. SQuAD is CC BY-SA 4.0 (Wikipedia text); cards say so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lodestar.retrieve.sparse import BM25Index


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qa", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--exclude-titles", default="", help="articles left out (e.g. kept for evaluation)")
    args = ap.parse_args()
    skip = {t for t in args.exclude_titles.split(",") if t}
    rows = [json.loads(line) for line in args.qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("answers") and r.get("title") not in skip]
    paragraphs = list(dict.fromkeys(r["context"] for r in rows))
    where = {p: i for i, p in enumerate(paragraphs)}
    index = BM25Index()
    index.add(np.arange(len(paragraphs), dtype=np.int64), paragraphs)
    with open(args.out, "w", encoding="utf-8") as f:
        for r, hits in zip(rows, index.search([r["question"] for r in rows], 3)):
            own = where[r["context"]]
            negatives = [paragraphs[i] for i, _ in hits if i != own][:1]
            f.write(json.dumps({"query": r["question"], "positive": r["context"], "negatives": negatives}) + "\n")
    print(f"{len(rows)} triplets over {len(paragraphs)} paragraphs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
