"""Write the first N distinct sentences of an STS TSV (sentence1, sentence2, score), one per line.

Usage: python bench/sts_texts.py DATA/stsb/dev.tsv OUT.txt [--limit 512] [--pairs N]

`--limit` feeds `lodestar bench embed --texts` a fixed, realistic set of short texts; `--pairs`
instead copies the header and the first N pairs (a small TSV for smoke-testing `eval sts`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def distinct_sentences(path: Path, limit: int) -> list[str]:
    """First `limit` distinct non-empty sentences, in file order (sentence1 before sentence2)."""
    seen: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            for key in ("sentence1", "sentence2"):
                text = " ".join(row[key].split())  # one line per text: no tabs/newlines inside
                if text:
                    seen.setdefault(text, None)
            if len(seen) >= limit:
                break
    return list(seen)[:limit]


def head_pairs(path: Path, pairs: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(pairs + 1), f)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--limit", type=int, default=512, help="distinct sentences to write")
    p.add_argument("--pairs", type=int, default=0, help="write the header and the first N pairs instead")
    args = p.parse_args(argv)
    lines = head_pairs(args.tsv, args.pairs) if args.pairs else distinct_sentences(args.tsv, args.limit)
    if len(lines) < (args.pairs + 1 if args.pairs else 1):
        p.error(f"{args.tsv}: too few rows")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
