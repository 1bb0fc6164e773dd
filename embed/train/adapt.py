"""`lodestar adapt --corpus DIR`: unsupervised domain adaptation of the embedding adapters.

No labels: the backbone itself writes one question for each sampled passage of the user's corpus
(synthetic queries), BM25 over the corpus picks a hard negative for each (the best-ranked passage
that is not the source), and those triplets train a dense (bidirectional) and/or a sparse (SPLADE)
adapter, optionally continuing adapters trained elsewhere. Generated queries are appended to
`<out>/synthetic.jsonl` as they are written, so an interrupted run resumes without regenerating.

`queries="title"` skips generation where the corpus has titles (papers, articles, Wikipedia): each
sampled document's title is the query and its text without the title the positive, a classic weak
supervision that costs no generation time. Either way no query set or relevance judgement is read.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.backbone import Backbone
from lodestar.backbone.chat import chat_ids, generate
from lodestar.embed.train.bidirectional import BidirectionalConfig, train_bidirectional
from lodestar.embed.train.common import RunSettings
from lodestar.embed.train.data import Triplet
from lodestar.embed.train.sparse import SparseConfig, train_sparse
from lodestar.errors import InvalidInput, NotFound

KINDS = ("dense", "sparse")
QUERY_SOURCES = ("generate", "title")  # what writes the pseudo-queries
QUERY_PROMPT = "Write a search query for this passage.\n\n{passage}"
# Two worked examples ahead of each passage (made up for this prompt, unrelated to any corpus): asked
# zero-shot, SmolLM2-135M mostly answers "What is the answer to this question?"; with them it writes
# topical queries in the passage's own words ("how does a algorithm for variable-length proper name
# compression work").
QUERY_SHOTS = (
    (
        "Effects of drought on wheat yields. Field trials over three seasons show that yields fell by 30% when "
        "rainfall was below 200 mm, with late-sown varieties hit hardest.",
        "how does drought affect wheat yields",
    ),
    (
        "Lithium-ion battery ageing at high temperature. Cells cycled at 45 C lost capacity twice as fast as cells "
        "at 25 C, mainly through growth of the solid electrolyte interphase.",
        "why do lithium-ion batteries age faster when hot",
    ),
)


def query_messages(passage: str) -> list[dict[str, str]]:
    """The few-shot chat that asks the backbone for one search query for `passage`."""
    messages = []
    for shot, query in QUERY_SHOTS:
        messages += [
            {"role": "user", "content": QUERY_PROMPT.format(passage=shot)},
            {"role": "assistant", "content": query},
        ]
    return messages + [{"role": "user", "content": QUERY_PROMPT.format(passage=passage)}]


@dataclass(frozen=True)
class AdaptConfig:
    run: RunSettings
    corpus: Path  # BEIR folder or jsonl {id|_id, title?, text}
    kinds: tuple[str, ...] = KINDS
    passages: int = 800  # sampled passages (one synthetic query each)
    queries: str = "generate"  # one of QUERY_SOURCES
    max_passage_tokens: int = 192
    question_tokens: int = 40
    dense_mode: str = "bidirectional"
    dense_init: Path | None = None  # e.g. adapters/bidirectional-stsb/adapter
    sparse_init: Path | None = None
    sparse_mode: str = "echo"
    steps: int = 200
    batch: int = 8
    lr: float = 1e-4


def _records(path: Path) -> list[tuple[str, str, str]]:
    """(id, title, text) of each document of a BEIR corpus.jsonl or any jsonl with id/_id and text."""
    path = Path(path)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise NotFound(f"no corpus at {path} (give a BEIR folder or a .jsonl file)")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                o = json.loads(line)
                title, text = (o.get("title") or "").strip(), (o.get("text") or "").strip()
                if title or text:
                    out.append((str(o.get("id", o.get("_id", n))), title, text))
    if not out:
        raise InvalidInput(f"{path} holds no document text")
    return out


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """(id, text) of a BEIR corpus.jsonl (title + text) or any jsonl with id/_id and text."""
    return [(i, f"{title}. {text}" if title and text else (title or text)) for i, title, text in _records(path)]


def untitled(title: str, text: str) -> str:
    """`text` without a leading copy of `title` (Cranfield's abstracts repeat it), else unchanged."""
    if title and text.lower().startswith(title.lower()):
        return text[len(title) :].lstrip(" .:;-\n")
    return text


def title_queries(path: Path, cfg: AdaptConfig) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows {id, passage, query} with each sampled document's title as its query, and the corpus
    as (id, text without its title): the documents hard negatives are drawn from, so that no
    passage of either side carries its own title."""
    records = [(i, title.rstrip(" ."), text) for i, title, text in _records(path)]
    docs = [(i, untitled(title, text)) for i, title, text in records]
    titled = {i: title for i, title, text in records if title and text}
    usable = [(i, t) for i, t in docs if len(titled.get(i, "").split()) >= 2 and len(t.split()) >= 5]
    if not usable:
        raise InvalidInput(f"{path} has no documents with both a title (2+ words) and text: use --queries generate")
    picked = random.Random(cfg.run.seed).sample(usable, min(cfg.passages, len(usable)))
    return [{"id": i, "passage": t, "query": titled[i]} for i, t in picked], docs


def clip(tokenizer: Any, text: str, max_tokens: int) -> str:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def clean_question(text: str) -> str | None:
    """The generated query, or None when it is too short, too long or degenerate (one word repeated)."""
    q = " ".join(text.replace("Question:", " ").split()).strip(' "')
    words = q.lower().split()
    if len(words) < 3 or len(q) > 300:
        return None
    return None if Counter(words).most_common(1)[0][1] > max(2, len(words) // 3) else q


def grounded(query: str, passage: str) -> bool:
    """Whether `query` is about `passage`: it shares at least one content word with it, and no fewer
    than with either worked example. SmolLM2-135M sometimes copies the second example's query
    or fills its template ("how does thesaurus age faster when hot"); this check drops 59 of 155
    queries generated for Cranfield passages and 35 of 159 for CISI's, most of them such copies."""
    from lodestar.text import analyze

    terms = set(analyze(query))
    own = len(terms & set(analyze(passage)))
    return own > 0 and all(own >= len(terms & shot) for shot in _shot_terms())


@functools.cache
def _shot_terms() -> tuple[frozenset[str], ...]:
    """Content words of each worked example (passage and query), analysed once."""
    from lodestar.text import analyze

    return tuple(frozenset(analyze(f"{shot} {q}")) for shot, q in QUERY_SHOTS)


def synthetic_queries(
    backbone: Backbone, docs: list[tuple[str, str]], cfg: AdaptConfig, path: Path
) -> list[dict[str, Any]]:
    """One generated question per sampled passage; resumable through `path` (jsonl). Only the
    usable ones come back: degenerate (`clean_question`) or not about their passage (`grounded`)."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    picked = random.Random(cfg.run.seed).sample(docs, min(cfg.passages, len(docs)))
    todo = [(i, clip(backbone.tokenizer, t, cfg.max_passage_tokens)) for i, t in picked if i not in done]
    bar = None
    if cfg.run.progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="synthetic queries", unit="passage")
    with open(path, "a", encoding="utf-8") as out:
        for s in range(0, len(todo), 8):
            chunk = todo[s : s + 8]
            prompts = [chat_ids(backbone, query_messages(p)) for _, p in chunk]
            for (doc_id, passage), g in zip(
                chunk, generate(backbone, prompts, cfg.question_tokens, newline_stops=True)
            ):
                row = {"id": doc_id, "passage": passage, "query": clean_question(g.text)}
                done[doc_id] = row
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()
    return [
        done[i] for i, _ in picked if i in done and done[i]["query"] and grounded(done[i]["query"], done[i]["passage"])
    ]


def with_hard_negatives(
    rows: list[dict[str, Any]], docs: list[tuple[str, str]], tokenizer: Any, cfg: AdaptConfig
) -> list[Triplet]:
    """(query, source passage, best BM25 passage that is not the source)."""
    from lodestar.retrieve.bm25 import BM25Index

    index = BM25Index()
    index.add(np.arange(len(docs), dtype=np.int64), [t for _, t in docs])
    position = {d: i for i, (d, _) in enumerate(docs)}
    out = []
    for row, hits in zip(rows, index.search([r["query"] for r in rows], 4)):
        source = position[row["id"]]
        negatives = [clip(tokenizer, docs[i][1], cfg.max_passage_tokens) for i, _ in hits if i != source][:1]
        out.append(Triplet(row["query"], row["passage"], tuple(negatives)))
    return out


def adapt(load: Callable[[], Backbone], cfg: AdaptConfig, command: str = "") -> dict[str, Any]:
    """Generate the synthetic triplets, then train each kind in `cfg.kinds` on a fresh backbone."""
    bad = [k for k in cfg.kinds if k not in KINDS]
    if bad or not cfg.kinds:
        raise InvalidInput(f"unknown adapter kind(s) {bad or cfg.kinds}: valid are {', '.join(KINDS)}")
    if cfg.queries not in QUERY_SOURCES:
        raise InvalidInput(f"unknown query source {cfg.queries!r}: valid are {', '.join(QUERY_SOURCES)}")
    t0 = time.perf_counter()
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.queries == "title":
        rows, docs = title_queries(cfg.corpus, cfg)
        backbone = load()
        rows = [{**r, "passage": clip(backbone.tokenizer, r["passage"], cfg.max_passage_tokens)} for r in rows]
    else:
        docs = read_corpus(cfg.corpus)
        backbone = load()
        rows = synthetic_queries(backbone, docs, cfg, out / "synthetic.jsonl")
    triplets = with_hard_negatives(rows, docs, backbone.tokenizer, cfg)
    if len(triplets) < 8:
        raise InvalidInput(
            f"only {len(triplets)} usable {'titled documents' if cfg.queries == 'title' else 'synthetic queries'}; "
            "give a larger corpus or raise --passages"
        )
    path = out / "triplets.jsonl"
    path.write_text(
        "".join(
            json.dumps({"query": t.query, "positive": t.positive, "negatives": list(t.negatives)}, ensure_ascii=False)
            + "\n"
            for t in triplets
        )
    )
    cards: dict[str, Any] = {}
    for kind in cfg.kinds:
        run = replace(cfg.run, out_dir=out / kind)
        bb = backbone if not cards else load()  # each kind trains its own LoRA on a clean model
        if kind == "dense":
            cards[kind] = train_bidirectional(
                bb,
                BidirectionalConfig(
                    run=run,
                    triplets=path,
                    stages=("supervised",),
                    mode=cfg.dense_mode,
                    supervised_steps=cfg.steps,
                    supervised_batch=cfg.batch * 4,
                    supervised_lr=cfg.lr,
                    init_adapter=cfg.dense_init,
                    max_tokens=cfg.max_passage_tokens,
                ),
                command,
            )
        else:
            cards[kind] = train_sparse(
                bb,
                SparseConfig(
                    run=run,
                    mode=cfg.sparse_mode,
                    steps=cfg.steps,
                    batch=cfg.batch,
                    lr=cfg.lr,
                    init_adapter=cfg.sparse_init,
                    max_tokens=cfg.max_passage_tokens,
                ),
                triplets,
                command,
            )
    card = {
        "kind": "adapt",
        "corpus": str(cfg.corpus),
        "queries": cfg.queries,
        "passages_sampled": min(cfg.passages, len(docs)),
        "synthetic_queries": len(rows),
        "triplets": len(triplets),
        "kinds": list(cfg.kinds),
        "adapters": {k: str(out / k / "adapter") for k in cfg.kinds},
        "command": command,
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "no labels used: "
        + (
            "queries are the documents' own titles, positives their text without it"
            if cfg.queries == "title"
            else "queries are written by the backbone for the corpus's own passages"
        ),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
