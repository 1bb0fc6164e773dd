"""Build labelled retrieval collections, in BEIR layout, from development data that no fusion choice
had seen when they were built (issue 32: "any other corpus you can build without its labels being used
for choices"). No fusion setting was chosen on them; what each led to is in docs/results.md.

    python bench/fusion/build_sets.py stsb ../shared/data/stsb/dev.tsv /tmp/beir-stsb
    python bench/fusion/build_sets.py mtbench ../shared/data/mtbench /tmp/beir-mtbench
    python bench/fusion/build_sets.py titles ../shared/data/cranfield/beir /tmp/beir-cranfield-titles

- `stsb`: paraphrase retrieval. The corpus is every distinct second sentence of the STS-B pairs; each
  first sentence whose pair scored >= 4.0 (of 5) is a query, its pair's second sentence the one
  relevant document. One-sentence documents: the calibration cannot draw a sentence from them and
  falls back, so this set tests the fallback on short texts.
- `mtbench`: question answering over long answers. The corpus is vicuna-7b's answers to both turns
  of the 80 MT-Bench questions; each first-turn question is a query, its own first-turn answer
  relevant with gain 2 and the second-turn answer (same conversation) with gain 1.
- `titles`: a BEIR set's documents cut to their titles (documents without one dropped, with their
  judgements), its queries and judgements kept: long queries over one-line documents.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

MIN_SCORE = 4.0


def _write(out: Path, corpus: dict[str, str], queries: dict[str, str], qrels: list[tuple[str, str, int]]) -> None:
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for i, text in corpus.items():
            f.write(json.dumps({"_id": i, "title": "", "text": text}) + "\n")
    with (out / "queries.jsonl").open("w") as f:
        for i, text in queries.items():
            f.write(json.dumps({"_id": i, "text": text}) + "\n")
    with (out / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, d, g in qrels:
            f.write(f"{q}\t{d}\t{g}\n")
    print(f"{out}: {len(corpus)} documents, {len(queries)} queries, {len(qrels)} judgements")


def stsb(tsv: Path, out: Path) -> None:
    """First sentences of pairs scored >= MIN_SCORE -> their second sentence, among all second sentences."""
    doc_of: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    with tsv.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for s1, s2, score in (r[:3] for r in rows[1:] if len(r) >= 3):
        d = doc_of.setdefault(s2, f"d{len(doc_of)}")
        if float(score) >= MIN_SCORE and s1 not in seen and s1 not in doc_of:
            seen.add(s1)
            q = f"q{len(queries)}"
            queries[q] = s1
            qrels.append((q, d, 1))
    _write(out, {i: s for s, i in doc_of.items()}, queries, qrels)


def mtbench(folder: Path, out: Path) -> None:
    """First-turn questions -> the answers of their own conversation, among all 160 answers."""
    answers_file = next(folder.glob("mt_bench_answer_*.jsonl"))
    corpus: dict[str, str] = {}
    for line in answers_file.read_text().splitlines():
        a = json.loads(line)
        for turn, text in enumerate(a["choices"][0]["turns"], 1):
            corpus[f"{a['question_id']}-{turn}"] = text
    queries: dict[str, str] = {}
    qrels: list[tuple[str, str, int]] = []
    for line in (folder / "mt_bench_question.jsonl").read_text().splitlines():
        q = json.loads(line)
        qid = str(q["question_id"])
        if f"{qid}-1" not in corpus:
            continue
        queries[qid] = q["turns"][0]
        qrels += [(qid, f"{qid}-1", 2)] + ([(qid, f"{qid}-2", 1)] if f"{qid}-2" in corpus else [])
    _write(out, corpus, queries, qrels)


def titles(folder: Path, out: Path) -> None:
    """The BEIR set in `folder` with each document reduced to its title."""
    corpus: dict[str, str] = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get("title", "").strip():
            corpus[str(d["_id"])] = d["title"].strip()
    queries = {str(q["_id"]): q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels: list[tuple[str, str, int]] = []
    for row in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = row.split("\t")[:3]
        if d in corpus and q in queries and int(g) > 0:
            qrels.append((q, d, int(g)))
    judged = {q for q, _, _ in qrels}
    _write(out, corpus, {q: t for q, t in queries.items() if q in judged}, qrels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["stsb", "mtbench", "titles"])
    p.add_argument("source", type=Path, help="stsb: a STS-B tsv; mtbench: the MT-Bench folder; titles: a BEIR folder")
    p.add_argument("out", type=Path)
    a = p.parse_args()
    {"stsb": stsb, "mtbench": mtbench, "titles": titles}[a.kind](a.source, a.out)


if __name__ == "__main__":
    main()
