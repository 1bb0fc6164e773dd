"""Retrieval triplets for `lodestar train sparse` / `train bidirectional --triplets`, from SQuAD or a BEIR set.

    python bench/adapters/triplets.py squad DATA_DIR/squad/qa.jsonl out.jsonl [--exclude-titles T1,T2]
    python bench/adapters/triplets.py beir DATA_DIR/cisi/beir out.jsonl [--per-query 16] [--exclude-fold 0/2]
    python bench/adapters/triplets.py mix out.jsonl a.jsonl b.jsonl [--seed 0]

Each (query, relevant passage) becomes {query, positive, negatives: [the best BM25 passage that is
not relevant to that query]}. SQuAD: an answerable question and its paragraph (CC BY-SA 4.0,
Wikipedia text). BEIR: a judged query and each document judged relevant, at most --per-query of them
(the first in the qrels file), so that a collection whose queries have dozens of judgements does
not fill batches with one query (its other positives would be false in-batch negatives). A set used
this way is training data: benchmark on another one, or hold a fold of its queries out
(--exclude-fold k/n keeps the queries outside fold k, `sparse_variants.py --fold k/n` scores the
ones inside; the fold is a stable hash of the query id, `in_fold`). `mix` concatenates triplet files and shuffles
the lines (seeded), so that batches draw from every source.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from lodestar.retrieve.bm25 import BM25Index


def write(pairs: list[tuple[str, set[int]]], passages: list[str], out: Path) -> int:
    """pairs: (query, indexes of its relevant passages), one triplet per relevant passage."""
    index = BM25Index()
    index.add(np.arange(len(passages), dtype=np.int64), passages)
    depth = 1 + max(len(rel) for _, rel in pairs)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for (query, relevant), hits in zip(pairs, index.search([q for q, _ in pairs], depth)):
            negatives = [passages[i] for i, _ in hits if i not in relevant][:1]
            for own in sorted(relevant):
                f.write(json.dumps({"query": query, "positive": passages[own], "negatives": negatives}) + "\n")
                n += 1
    return n


def from_squad(qa: Path, exclude_titles: str) -> tuple[list[tuple[str, set[int]]], list[str]]:
    skip = {t for t in exclude_titles.split(",") if t}
    rows = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("answers") and r.get("title") not in skip]
    paragraphs = list(dict.fromkeys(r["context"] for r in rows))
    where = {p: i for i, p in enumerate(paragraphs)}
    return [(r["question"], {where[r["context"]]}) for r in rows], paragraphs


def from_beir(folder: Path, per_query: int, exclude_fold: str = "") -> tuple[list[tuple[str, set[int]]], list[str]]:
    from lodestar.retrieve.eval.beir import in_fold, read_beir

    docs, queries, qrels = read_beir(folder)
    where = {d.id: i for i, d in enumerate(docs)}
    pairs = []
    for qid, judged in qrels.items():
        relevant = [where[d] for d in judged if d in where][:per_query]
        if qid in queries and relevant and not (exclude_fold and in_fold(qid, exclude_fold)):
            pairs.append((queries[qid], set(relevant)))
    return pairs, [d.text for d in docs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="source", required=True)
    sq = sub.add_parser("squad", help="SQuAD jsonl {question, context, answers, title}")
    sq.add_argument("qa", type=Path)
    sq.add_argument("out", type=Path)
    sq.add_argument("--exclude-titles", default="", help="articles left out (e.g. kept for evaluation)")
    be = sub.add_parser("beir", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    be.add_argument("folder", type=Path)
    be.add_argument("out", type=Path)
    be.add_argument("--per-query", type=int, default=16, help="relevant documents used per query")
    be.add_argument("--exclude-fold", default="", help="k/n: leave out the queries of fold k (held out for evaluation)")
    mx = sub.add_parser("mix", help="shuffle several triplet files into one")
    mx.add_argument("out", type=Path)
    mx.add_argument("inputs", type=Path, nargs="+")
    mx.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.source == "mix":
        lines = [line for p in args.inputs for line in p.read_text(encoding="utf-8").splitlines(keepends=True)]
        random.Random(args.seed).shuffle(lines)
        args.out.write_text("".join(lines), encoding="utf-8")
        print(f"{len(lines)} triplets from {len(args.inputs)} files -> {args.out}")
        return 0
    if args.source == "squad":
        pairs, passages = from_squad(args.qa, args.exclude_titles)
    else:
        pairs, passages = from_beir(args.folder, args.per_query, args.exclude_fold)
    n = write(pairs, passages, args.out)
    print(f"{n} triplets from {len(pairs)} queries over {len(passages)} passages -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
