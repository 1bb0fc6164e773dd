"""Training data readers: sentences, scored pairs, triplets; and seeded train/dev splits."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lodestar.embed.eval.sts import read_sts
from lodestar.errors import InvalidInput, NotFound
from lodestar.jsonl import read_jsonl

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float


@dataclass(frozen=True)
class Triplet:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


def _texts_of(path: Path) -> Iterable[str]:
    """Texts of a file: BEIR folder / .jsonl (title + text) or plain lines; STS TSVs give both sentences."""
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.is_file():
            raise NotFound(f"{path} is a folder without corpus.jsonl (give a BEIR folder, .jsonl, .tsv or .txt)")
        path = corpus
    if not path.is_file():
        raise NotFound(f"training data {str(path)!r} does not exist")
    if path.suffix == ".tsv":
        s1, s2, _ = read_sts(path)
        yield from s1
        yield from s2
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if path.suffix in (".jsonl", ".ndjson"):
                o = json.loads(line)
                title, text = (o.get("title") or "").strip(), (o.get("text") or "").strip()
                line = f"{title}. {text}" if title and text else (title or text)
            yield line


def read_sentences(
    paths: Iterable[Path], limit: int = 0, min_words: int = 4, max_words: int = 64, seed: int = 0
) -> list[str]:
    """Distinct sentences (split on sentence ends) of `min_words`..`max_words` words, shuffled."""
    seen: dict[str, None] = {}
    for path in paths:
        for text in _texts_of(Path(path)):
            for sent in _SENT.split(text):
                sent = " ".join(sent.split())
                if min_words <= len(sent.split()) <= max_words:
                    seen.setdefault(sent, None)
    out = list(seen)
    random.Random(seed).shuffle(out)
    if not out:
        raise InvalidInput(f"no sentences of {min_words}..{max_words} words in {[str(p) for p in paths]}")
    return out[:limit] if limit else out


def read_pairs(path: Path) -> list[Pair]:
    """STS TSV (sentence1, sentence2, score with a header)."""
    s1, s2, scores = read_sts(Path(path))
    return [Pair(a, b, float(s)) for a, b, s in zip(s1, s2, scores)]


def read_triplets(path: Path) -> list[Triplet]:
    """jsonl {query, positive, negatives?}."""
    out = []
    for n, o in read_jsonl(path):
        if not isinstance(o, dict) or not isinstance(o.get("query"), str) or not isinstance(o.get("positive"), str):
            raise InvalidInput(f"{path}:{n}: each line needs string 'query' and 'positive' (and optional 'negatives')")
        out.append(Triplet(o["query"], o["positive"], tuple(o.get("negatives") or ())))
    if not out:
        raise InvalidInput(f"{path} holds no triplet")
    return out


def split(items: list, dev_fraction: float, seed: int, max_dev: int = 500) -> tuple[list, list]:
    """Seeded (train, dev) split; dev gets dev_fraction of the items, at most max_dev, at least 1."""
    if not 0.0 < dev_fraction < 1.0:
        raise InvalidInput(f"dev_fraction must be in (0, 1); got {dev_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, min(max_dev, int(round(dev_fraction * len(items)))))
    if n_dev >= len(items):
        raise InvalidInput(f"{len(items)} items are too few to hold out a dev set")
    return [items[i] for i in order[n_dev:]], [items[i] for i in order[:n_dev]]
