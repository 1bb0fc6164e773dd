"""The retrieval engine end to end with a fake embedder: collections, upsert/replace/delete on every
index type, all-or-nothing batches, filters before ranking, hybrid fusion, chunking, persistence,
replay after a crash, corrupt snapshots, restore, rebuild and stats."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lodestar.embed.modes import get_mode
from lodestar.embedding import EmbedOptions, EmbedResult
from lodestar.errors import AlreadyExists, InvalidInput, NotFound, Overloaded, Unavailable
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.snapshot import MANIFEST
from lodestar.retrieve.types import CollectionConfig, Document, Filter, SearchRequest

D = 32
WORD = re.compile(r"\w+")
# the fake model "understands" these: they embed like the word they map to, but BM25 sees other tokens
SYNONYMS = {"automobile": "car", "vehicle": "car", "fix": "repair", "mend": "repair", "inexpensive": "cheap"}
INDEXES = ["Flat", "HNSW32", "IVF4,Flat", "IVF4,PQ4"]


class FakeBackbone:
    hidden_size = D
    model_id = "fake-hash-32"


class FakeEmbedder:
    """Deterministic bag of concepts: each word (after synonyms) is a seeded random unit vector."""

    def __init__(self) -> None:
        self.backbone = FakeBackbone()
        self.calls: list[tuple[list[str], EmbedOptions]] = []
        self.adapters = {"legal"}
        self.lock = threading.Lock()

    @staticmethod
    @functools.cache
    def word_vector(word: str) -> np.ndarray:
        concept = SYNONYMS.get(word, word)
        seed = int.from_bytes(hashlib.sha256(concept.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(D)
        return v / np.linalg.norm(v)

    def embed(self, texts: list[str], options: EmbedOptions | None = None, timeout: float | None = None) -> EmbedResult:
        o = options or EmbedOptions()
        mode = get_mode(o.mode or "mean")
        mode.check_prompt(o.prompt)
        if o.adapter and o.adapter not in self.adapters:
            raise InvalidInput(f"unknown adapter {o.adapter!r}")
        if not 0 <= o.dimensions <= D:
            raise InvalidInput("dimensions out of range")
        with self.lock:
            self.calls.append((list(texts), o))
        out = np.zeros((len(texts), D), dtype=np.float32)  # (N, D)
        for i, t in enumerate(texts):
            for w in WORD.findall(t.lower()):
                out[i] += self.word_vector(w)
            if "poison" in t:
                out[i] = np.nan  # a broken model output
        out = out[:, : o.dimensions or D]
        if o.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return EmbedResult(
            vectors=out,
            packed=None,
            token_counts=[1] * len(texts),
            truncated=[False] * len(texts),
            model="fake",
            mode=mode.name,
        )  # type: ignore[arg-type]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in WORD.finditer(text)]

    def check_mode(self, mode: str, prompt: str = "") -> None:
        get_mode(mode).check_prompt(prompt)  # as EmbeddingEngine.check_mode


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def engine(tmp_path: Path, embedder: FakeEmbedder) -> RetrievalEngine:
    e = RetrievalEngine(tmp_path / "collections", embedder)
    yield e
    e.close()


def reopen(engine: RetrievalEngine, close: bool = True) -> RetrievalEngine:
    if close:
        engine.close()
    return RetrievalEngine(engine.root, engine.embedder)


def ids(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.id for h in hits]


def search(engine: RetrievalEngine, name: str, query: str, **kw: object) -> list:  # type: ignore[type-arg]
    return engine.search(name, SearchRequest(queries=[query], **kw))[0]  # type: ignore[arg-type]


VOCAB = [f"w{i}" for i in range(40)]


def corpus(n: int, seed: int = 0) -> list[Document]:
    """n documents: a few shared topic words plus one unique word each ("uniqN", weighted x3 so the
    fake 32-dim embedding finds it among hundreds)."""
    rng = np.random.default_rng(seed)
    return [
        Document(
            f"doc-{i}", " ".join([f"uniq{i}", *rng.choice(VOCAB, 4), f"uniq{i} uniq{i}"]), {"n": i, "even": i % 2 == 0}
        )
        for i in range(n)
    ]


# --- collections --------------------------------------------------------------------------------


def test_create_list_config_drop(engine: RetrievalEngine) -> None:
    stats = engine.create(CollectionConfig(name="a"))
    assert (stats.name, stats.documents, stats.chunks, stats.dimensions, stats.index, stats.sparse, stats.status) == (
        "a",
        0,
        0,
        D,
        "Flat",
        "bm25",
        "ok",
    )
    with pytest.raises(AlreadyExists, match="'a' already exists"):
        engine.create(CollectionConfig(name="a", index="HNSW32"))
    engine.create(CollectionConfig(name="b.v2-x_1", sparse="none", dimensions=16))
    assert [s.name for s in engine.list()] == ["a", "b.v2-x_1"]
    assert engine.config("b.v2-x_1") == CollectionConfig(name="b.v2-x_1", sparse="none", dimensions=16)
    assert engine.status() == {"a": "ok", "b.v2-x_1": "ok"}
    engine.drop("a")
    assert not (engine.root / "a").exists()
    with pytest.raises(NotFound, match=r"collection 'a' does not exist \(ListCollections"):
        engine.stats("a")
    with pytest.raises(NotFound):
        engine.drop("a")
    assert engine.create(CollectionConfig(name="a")).documents == 0  # the name is free again
    assert sorted(p.name for p in engine.root.iterdir()) == ["a", "b.v2-x_1"]


def test_failed_drop_keeps_the_collection_served(engine: RetrievalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop whose folder cannot be moved aside leaves the collection as it was, still served, instead of
    gone from this process but back (with its documents) at the next start."""
    engine.create(CollectionConfig(name="a"))
    engine.upsert("a", [Document(id="d1", text="cheap car repair")])
    real = os.rename

    def refuse(src, dst, *a, **k):  # type: ignore[no-untyped-def]
        if Path(dst).name.startswith(".drop-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(Unavailable, match=r"collection 'a' was not dropped: .*Permission denied.*still served"):
        engine.drop("a")
    assert engine.status() == {"a": "ok"}
    assert engine.stats("a").documents == 1
    assert engine.search("a", SearchRequest(queries=["car"], k=1))[0][0].id == "d1"
    monkeypatch.setattr(os, "rename", real)
    engine.drop("a")
    assert not (engine.root / "a").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CollectionConfig(name=""), "bad collection name ''"),
        (CollectionConfig(name="has space"), "bad collection name"),
        (CollectionConfig(name="../up"), "bad collection name"),
        (CollectionConfig(name=".hidden"), "not starting with '.'"),
        (CollectionConfig(name="x" * 65), "1 to 64 characters"),
        (CollectionConfig(name="c", mode="nope"), "unknown mode 'nope': valid modes are mean"),
        (CollectionConfig(name="c", metric="hamming"), "unknown metric 'hamming': valid metrics are cosine, ip, l2"),
        (CollectionConfig(name="c", sparse="splade"), "unknown sparse kind 'splade': valid kinds are none, bm25"),
        (CollectionConfig(name="c", index="NotAnIndex"), ""),
        # parses, but would fail at training (the acknowledged writes then break every rebuild) or crash the server
        (CollectionConfig(name="c", index="PCA64,Flat"), "PCAMatrix cannot output 64 dimensions from 32: use 1..32"),
        (CollectionConfig(name="c", index="HNSW0"), "HNSW needs M (neighbours per node) in 2..256"),
        (
            CollectionConfig(name="c", chunk_tokens=16, chunk_overlap=16),
            "chunk_overlap=16 must be at least 0 and less than chunk_tokens=16",
        ),
        (CollectionConfig(name="c", chunk_tokens=-1), "chunk_tokens=-1 is out of range"),
        (CollectionConfig(name="c", dimensions=33), "dimensions=33 is out of range: use 1..32"),
        (CollectionConfig(name="c", dimensions=-1), "dimensions=-1 is out of range"),
        (
            CollectionConfig(name="c", doc_prompt="no placeholder"),
            "doc_prompt: prompt for mode 'mean' must contain '{text}'",
        ),
        (CollectionConfig(name="c", adapter="missing"), "unknown adapter 'missing'"),
    ],
)
def test_bad_configs_are_rejected_and_create_nothing(
    engine: RetrievalEngine, config: CollectionConfig, message: str
) -> None:
    with pytest.raises(InvalidInput) as e:
        engine.create(config)
    assert message in str(e.value)
    assert engine.list() == [] and list(engine.root.iterdir()) == []


def test_no_chunking_allows_any_overlap(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", chunk_tokens=0, chunk_overlap=32))
    assert engine.upsert("c", [Document("a", "one two three " * 50)]) == (1, 1)


# --- writes on every index type -----------------------------------------------------------------


@pytest.mark.parametrize("index", INDEXES)
def test_upsert_replace_delete_get_on_every_index(engine: RetrievalEngine, index: str) -> None:
    engine.create(CollectionConfig(name="c", index=index))
    docs = corpus(300)
    assert engine.upsert("c", docs[:150]) == (150, 150)
    assert engine.upsert("c", docs[150:]) == (150, 150)
    stats = engine.stats("c")
    assert (stats.documents, stats.chunks, stats.index_vectors) == (300, 300, 300)
    for i in (7, 123, 280):
        assert search(engine, "c", f"uniq{i}")[0].id == f"doc-{i}"
    # replace: same id, new text; the old text is never found again
    engine.upsert("c", [Document("doc-7", "completely different words here", {"replaced": True})])
    for hit in search(engine, "c", "uniq7", k=300) + search(engine, "c", "uniq7", k=300, retriever="sparse"):
        assert hit.id != "doc-7" or hit.text == "completely different words here"
    assert search(engine, "c", "completely different words")[0].id == "doc-7"
    # delete: gone from every retriever and from get
    assert engine.delete("c", ["doc-123", "doc-280", "never-existed"]) == 2
    assert engine.delete("c", []) == 0
    for retriever in ("dense", "sparse", "hybrid"):
        for q in ("uniq123", "uniq280"):
            found = ids(search(engine, "c", q, k=300, retriever=retriever))
            assert "doc-123" not in found and "doc-280" not in found
            assert len(found) == len(set(found))  # one hit per document
    got = engine.get("c", ["doc-7", "doc-123", "doc-5"])
    assert got[0] == Document("doc-7", "completely different words here", {"replaced": True})
    assert got[1] is None and got[2] == docs[5]
    stats = engine.stats("c")
    assert (stats.documents, stats.chunks, stats.index_vectors) == (298, 298, 298)


@pytest.fixture
def one_omp_thread() -> None:
    """k-means under OpenMP on a small, shared CI box spins badly; one thread is fast and steady."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.usefixtures("one_omp_thread")
def test_pq_trains_at_its_default_train_size_and_keeps_working(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="pq", index="IVF4,PQ4", sparse="none"))
    docs = corpus(10000)
    engine.upsert("pq", docs[:9000])
    assert not engine.stats("pq").trained  # 39 x 256 PQ centroids = 9984 vectors before training
    engine.upsert("pq", docs[9000:])
    stats = engine.stats("pq")
    assert stats.trained and stats.index_vectors == 10000 and stats.note == ""
    for i in (5, 4321, 9999):  # 4-byte codes are lossy: the match is near the top, not always first
        assert f"doc-{i}" in ids(search(engine, "pq", f"uniq{i}", k=10))
    engine.upsert("pq", [Document("doc-5", "replaced text entirely")])
    engine.delete("pq", ["doc-4321"])
    for q in ("uniq5", "uniq4321"):
        for hit in search(engine, "pq", q, k=100):
            assert hit.id != "doc-4321" and (hit.id != "doc-5" or hit.text == "replaced text entirely")
    assert engine.stats("pq").index_vectors == 9999
    hits = search(engine, "pq", "uniq77", k=1, filters=(Filter("n", "eq", 9998),))
    assert ids(hits) == ["doc-9998"]


def test_rebuild_compacts_graph_tombstones(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="g", index="HNSW32"))
    engine.upsert("g", corpus(40))
    engine.upsert("g", [Document("doc-1", "new words for one")])
    engine.delete("g", ["doc-2", "doc-3"])
    assert "removed vectors" in engine.stats("g").note  # HNSW cannot delete: tombstones until compaction
    stats = engine.rebuild("g")
    assert stats.note == "" and stats.index_vectors == 38 and stats.status == "ok"
    assert search(engine, "g", "uniq5")[0].id == "doc-5"


def test_ivf_trains_and_notes(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="ivf", index="IVF4,Flat"))
    engine.upsert("ivf", corpus(3))
    small = engine.stats("ivf")
    assert not small.trained and small.note  # says it searches exactly until it can train
    assert search(engine, "ivf", "uniq1")[0].id == "doc-1"
    engine.upsert("ivf", corpus(400)[3:])
    assert engine.stats("ivf").trained


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Document("", "text"), "document 2: id is empty"),
        (Document("x" * 513, "text"), "is 513 UTF-8 bytes; the limit is max_id_bytes=512"),
        (Document("é" * 257, "text"), "is 514 UTF-8 bytes"),
        (Document("doc-0", "dup"), "document 2 (id 'doc-0'): id repeats document 0 of this batch"),
        (Document("z", "   "), "document 2 (id 'z'): text is empty"),
        (Document("z", "a\x00b"), "NUL"),
        (Document("z", "bad \ud800 surrogate"), "not valid Unicode"),
        (Document("z", "t", {"when": {1, 2}}), "metadata is not JSON-serialisable"),
        (Document("z", "t", {"x": float("nan")}), "metadata is not JSON-serialisable"),
        (Document("z", "t", {1: "int key"}), "metadata key 1 is not a string"),
        (
            Document("z", "t", {"a": json.loads("[" * 64 + "]" * 64)}),
            "metadata is nested too deeply: the limit is 64 levels",
        ),
        (Document("z", "t", ["not", "a", "dict"]), "metadata must be an object"),  # type: ignore[arg-type]
    ],
)
def test_rejected_batch_changes_nothing(
    engine: RetrievalEngine, embedder: FakeEmbedder, bad: Document, message: str
) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.upsert("c", [Document("keep", "already here")])
    before, calls = engine.stats("c"), len(embedder.calls)
    with pytest.raises(InvalidInput) as e:
        engine.upsert("c", [Document("doc-0", "good one"), Document("doc-1", "good two"), bad])
    assert message in str(e.value)
    assert len(embedder.calls) == calls  # nothing was even embedded
    assert engine.get("c", ["doc-0", "doc-1", "keep"])[:2] == [None, None]
    after = engine.stats("c")
    assert (after.documents, after.chunks, after.index_vectors) == (
        before.documents,
        before.chunks,
        before.index_vectors,
    )


def test_non_finite_embeddings_are_never_written(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    with pytest.raises(InvalidInput, match="embedding of chunk 1 .* is not finite; nothing was written"):
        engine.upsert("c", [Document("a", "fine"), Document("b", "poison pill")])
    assert engine.get("c", ["a", "b"]) == [None, None] and engine.stats("c").documents == 0
    assert engine.rebuild("c").status == "ok"


def test_batch_limits(tmp_path: Path, embedder: FakeEmbedder) -> None:
    e = RetrievalEngine(tmp_path, embedder, max_docs_per_upsert=3, max_text_chars=10, max_id_bytes=4)
    e.create(CollectionConfig(name="c"))
    with pytest.raises(InvalidInput, match="4 documents in one upsert; the limit is max_docs_per_upsert=3"):
        e.upsert("c", [Document(str(i), "t") for i in range(4)])
    with pytest.raises(InvalidInput, match="text is 11 characters; the limit is max_text_chars=10"):
        e.upsert("c", [Document("a", "x" * 11)])
    with pytest.raises(InvalidInput, match="no documents"):
        e.upsert("c", [])
    with pytest.raises(InvalidInput, match="4 ids in one delete"):
        e.delete("c", ["a", "b", "c", "d"])
    with pytest.raises(NotFound):
        e.upsert("nope", [Document("a", "t")])
    e.close()


# --- search -------------------------------------------------------------------------------------


def test_filters_apply_before_ranking(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    docs = [
        Document(f"d{i}", f"red apple fruit {' '.join(VOCAB[i : i + 3])}", {"lang": "en", "year": 2000 + i})
        for i in range(30)
    ]
    docs.append(Document("odd", "blue ocean waves deep water", {"lang": "fr", "year": 1990, "tags": "x"}))
    engine.upsert("c", docs)
    assert search(engine, "c", "red apple fruit", k=31)[-1].id == "odd"  # least similar of all
    for f in (
        Filter("lang", "eq", "fr"),
        Filter("lang", "in", ["fr", "de"]),
        Filter("year", "lt", 2000),
        Filter("lang", "ne", "en"),
    ):
        for retriever in ("dense", "hybrid"):
            hits = search(engine, "c", "red apple fruit", k=1, filters=(f,), retriever=retriever)
            assert ids(hits) == ["odd"], (f, retriever)
            assert hits[0].metadata == {"lang": "fr", "year": 1990, "tags": "x"}
    hits = search(engine, "c", "red apple", k=5, filters=(Filter("year", "gte", 2025), Filter("lang", "eq", "en")))
    assert sorted(ids(hits)) == ["d25", "d26", "d27", "d28", "d29"]
    assert search(engine, "c", "red apple", filters=(Filter("lang", "eq", "xx"),)) == []
    assert ids(search(engine, "c", "apple", retriever="sparse", k=3, filters=(Filter("year", "eq", 2003),))) == ["d3"]
    with pytest.raises(InvalidInput, match="filter 0 \\('lang' 'like'\\): unknown op 'like'"):
        search(engine, "c", "x", filters=(Filter("lang", "like", "e%"),))


def test_hybrid_puts_the_document_good_at_both_first(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.upsert(
        "c",
        [
            # every query token (and the only "car"), diluted by unrelated words: wins BM25, weak densely
            Document("lexical", "cheap car repair museum history archive gallery painting sculpture statue"),
            Document("semantic", "inexpensive automobile mend"),  # synonyms only: no token in common
            Document("both", "cheap automobile repair shop"),  # two tokens and one synonym: second at both
            Document("near1", "inexpensive vehicle fix garage tools"),
            Document("near2", "automobile mend inexpensive paint shop wheels"),
            *[Document(f"manual{i}", f"repair manual {' '.join(VOCAB[i : i + 6])}") for i in range(3)],
            *[Document(f"filler{i}", f"garden flowers {VOCAB[i]} {VOCAB[i + 1]}") for i in range(10)],
        ],
    )
    q = "cheap car repair"
    dense = ids(search(engine, "c", q, k=5))
    sparse = ids(search(engine, "c", q, k=5, retriever="sparse"))
    assert dense[:2] == ["semantic", "both"] and dense.index("lexical") >= 3
    assert sparse[:2] == ["lexical", "both"] and "semantic" not in sparse
    for fusion in ("rrf", "weighted"):
        hits = search(engine, "c", q, k=3, retriever="hybrid", fusion=fusion)
        assert hits[0].id == "both", (fusion, ids(hits))
        assert hits[0].dense_score is not None and hits[0].sparse_score is not None
        assert hits[0].score > hits[1].score
    # alpha picks a side for weighted fusion
    assert search(engine, "c", q, k=1, retriever="hybrid", fusion="weighted", alpha=1.0)[0].id == "semantic"
    assert search(engine, "c", q, k=1, retriever="hybrid", fusion="weighted", alpha=0.0)[0].id == "lexical"
    # a document only one side found keeps None for the other side
    semantic = [h for h in search(engine, "c", q, k=20, retriever="hybrid") if h.id == "semantic"][0]
    assert semantic.sparse_score is None and semantic.dense_score == pytest.approx(1.0, abs=1e-5)


def test_batch_search_one_list_per_query(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", index="HNSW32"))
    engine.upsert("c", corpus(50))
    for retriever in ("dense", "sparse", "hybrid"):
        results = engine.search("c", SearchRequest(queries=["uniq3", "uniq40", "uniq17"], k=4, retriever=retriever))
        assert [r[0].id for r in results] == ["doc-3", "doc-40", "doc-17"]
        assert all(len(r) <= 4 for r in results)
        assert all(r[0].score >= r[-1].score for r in results)


def test_long_document_is_chunked_and_the_matched_chunk_reported(
    engine: RetrievalEngine, embedder: FakeEmbedder
) -> None:
    engine.create(CollectionConfig(name="c", chunk_tokens=8, chunk_overlap=2))
    words = [f"filler{i}" for i in range(40)]
    words[30] = "needle"
    text = " ".join(words)
    docs, chunks = engine.upsert("c", [Document("long", text), Document("short", "tiny doc")])
    assert docs == 2 and chunks == 7 + 1  # 40 tokens, stride 6: 7 chunks
    assert engine.stats("c").chunks == 8
    for retriever in ("dense", "sparse", "hybrid"):
        hits = search(engine, "c", "needle", k=2, retriever=retriever)
        assert hits[0].id == "long" and hits[0].text == text
        assert "needle" in hits[0].chunk_text and hits[0].chunk in (4, 5)
        assert ids(hits) == ["long", "short"] or len(hits) == 1  # documents, not chunks
    embedded = [t for texts, o in embedder.calls if o.prompt == "" for t in texts]
    assert "filler0 filler1 filler2 filler3 filler4 filler5 filler6 filler7" in embedded
    hit = search(engine, "c", "needle", include_text=False)[0]
    assert (hit.text, hit.chunk_text) == ("", "")


def test_many_chunks_per_document_still_fill_k(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", chunk_tokens=2, chunk_overlap=0))
    engine.upsert("c", [Document("big", " ".join(["alpha beta"] * 100))])  # 100 chunks that all match
    engine.upsert("c", [Document(f"s{i}", f"alpha {VOCAB[i]}") for i in range(5)])
    hits = search(engine, "c", "alpha beta", k=6)
    assert len(hits) == 6 and hits[0].id == "big"


def test_prompts_and_options_reach_the_embedder(engine: RetrievalEngine, embedder: FakeEmbedder) -> None:
    cfg = CollectionConfig(
        name="c",
        query_prompt="query: {text}",
        query_instruction="find it",
        doc_prompt="passage: {text}",
        doc_instruction="store it",
        adapter="legal",
        dimensions=16,
        metric="ip",
    )
    engine.create(cfg)
    embedder.calls.clear()
    engine.upsert("c", [Document("a", "hello world")])
    search(engine, "c", "hello")
    (doc_texts, doc_o), (q_texts, q_o) = embedder.calls
    assert doc_texts == ["hello world"] and (doc_o.prompt, doc_o.instruction) == ("passage: {text}", "store it")
    assert q_texts == ["hello"] and (q_o.prompt, q_o.instruction) == ("query: {text}", "find it")
    for o in (doc_o, q_o):
        assert (o.mode, o.adapter, o.dimensions, o.normalize) == ("mean", "legal", 16, False)
    assert engine.stats("c").dimensions == 16


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_every_metric_ranks_the_match_first(engine: RetrievalEngine, metric: str) -> None:
    engine.create(CollectionConfig(name="c", metric=metric))
    engine.upsert("c", [Document(f"m{i}", f"uniq{i}") for i in range(40)])  # unit vectors: no norm bias for ip/l2
    hits = search(engine, "c", "uniq11", k=3)
    assert hits[0].id == "m11" and hits[0].score > hits[1].score >= hits[2].score


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({"k": 0}, "k=0 is out of range: use 1..1000"),
        ({"k": 1001}, "k=1001 is out of range"),
        ({"retriever": "magic"}, "unknown retriever 'magic': valid retrievers are dense, sparse, hybrid"),
        ({"fusion": "max"}, "unknown fusion 'max': valid fusions are rrf, weighted, auto, dbsf"),
        ({"alpha": 1.5}, "alpha=1.5 is out of range: use 0..1"),
        ({"queries": []}, "queries is empty"),
        ({"queries": ["ok", " "]}, "query 1 is empty"),
        ({"filters": (Filter("x", "in", 3),)}, "op 'in' needs a list"),
        ({"filters": (Filter("", "eq", 3),)}, "field is empty"),
        ({"filters": (Filter("x", "gt", [1]),)}, "needs a number or a string"),
    ],
)
def test_bad_search_requests(engine: RetrievalEngine, request_kw: dict, message: str) -> None:  # type: ignore[type-arg]
    engine.create(CollectionConfig(name="c"))
    kw = {"queries": ["hello"], **request_kw}
    with pytest.raises(InvalidInput) as e:
        engine.search("c", SearchRequest(**kw))
    assert message in str(e.value)


def test_sparse_needs_a_sparse_index(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", sparse="none"))
    engine.upsert("c", corpus(5))
    for retriever in ("sparse", "hybrid"):
        with pytest.raises(InvalidInput, match="created with sparse='none'"):
            search(engine, "c", "uniq1", retriever=retriever)
    assert search(engine, "c", "uniq1")[0].id == "doc-1"
    assert search(engine, "c", "uniq1")[0].sparse_score is None


def test_empty_collection_searches_empty(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    for retriever in ("dense", "sparse", "hybrid"):
        assert engine.search("c", SearchRequest(queries=["a", "b"], retriever=retriever)) == [[], []]


# --- durability ---------------------------------------------------------------------------------


def snapshot_results(engine: RetrievalEngine, name: str) -> list[list[tuple[str, float]]]:
    out = []
    for retriever in ("dense", "sparse", "hybrid"):
        for q in ("uniq3", "w1 w2", "uniq77 w5"):
            out.append([(h.id, round(h.score, 5)) for h in search(engine, name, q, k=10, retriever=retriever)])
    return out


@pytest.mark.parametrize("index", ["Flat", "IVF4,PQ4"])
def test_close_and_reopen_gives_the_same_results(engine: RetrievalEngine, index: str) -> None:
    engine.create(CollectionConfig(name="c", index=index))
    engine.upsert("c", corpus(300))
    engine.delete("c", ["doc-10"])
    before, stats = snapshot_results(engine, "c"), engine.stats("c")
    engine2 = reopen(engine)
    assert snapshot_results(engine2, "c") == before
    after = engine2.stats("c")
    assert (after.documents, after.chunks, after.index_vectors, after.trained) == (
        stats.documents,
        stats.chunks,
        stats.index_vectors,
        stats.trained,
    )
    assert engine2.get("c", ["doc-10"]) == [None]
    engine2.close()


def test_replay_after_abandoning_without_snapshot(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.upsert("c", corpus(100))
    engine.snapshot("c")  # the snapshot covers the first 100 ...
    engine.upsert("c", [Document("doc-3", "rewritten after the snapshot"), Document("new", "brand new uniq3")])
    engine.delete("c", ["doc-50"])  # ... then changes it never saw
    want = snapshot_results(engine, "c")
    engine2 = reopen(engine, close=False)  # no close: nothing snapshotted since
    assert snapshot_results(engine2, "c") == want
    assert engine2.get("c", ["doc-3", "doc-50"])[0].text == "rewritten after the snapshot"
    assert engine2.get("c", ["doc-50"]) == [None]
    assert engine2.stats("c").index_vectors == 100
    engine2.close()


CRASHER = """
import os, sys
sys.path.insert(0, {tests!r})
from test_retrieve_engine import FakeEmbedder, corpus
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.types import CollectionConfig, Document
e = RetrievalEngine({root!r}, FakeEmbedder())
e.create(CollectionConfig(name="c", index="HNSW32"))
e.upsert("c", corpus(60))
e.snapshot("c")
e.upsert("c", [Document("late", "uniq999 written after the snapshot uniq999 uniq999")])
e.delete("c", ["doc-1"])
print("acknowledged", flush=True)
os._exit(0)  # die like a SIGKILL: no close, no final snapshot
"""


def test_process_death_loses_no_acknowledged_write(tmp_path: Path, embedder: FakeEmbedder) -> None:
    root = tmp_path / "collections"
    code = CRASHER.format(tests=str(Path(__file__).parent), root=str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "acknowledged", out.stderr
    e = RetrievalEngine(root, embedder)
    assert e.status() == {"c": "ok"}
    assert search(e, "c", "uniq999")[0].id == "late"
    assert search(e, "c", "uniq999", retriever="sparse")[0].id == "late"
    assert e.get("c", ["doc-1"]) == [None] and "doc-1" not in ids(search(e, "c", "uniq1", k=60))
    assert e.stats("c").documents == 60
    e.close()


def flip_byte(snapshot_dir: Path, name: str) -> Path:
    manifest = json.loads((snapshot_dir / MANIFEST).read_text())
    path = snapshot_dir / manifest["files"][name]["file"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("part", ["dense", "sparse"])
def test_corrupt_snapshot_marks_only_that_collection(engine: RetrievalEngine, part: str) -> None:
    for name in ("bad", "good"):
        engine.create(CollectionConfig(name=name))
        engine.upsert(name, corpus(100))
    want = snapshot_results(engine, "bad")
    engine.close()
    path = flip_byte(engine.root / "bad" / "snapshot", part)
    engine2 = RetrievalEngine(engine.root, engine.embedder)
    status = engine2.status()
    assert status["good"] == "ok"
    assert status["bad"].startswith("corrupt: ") and path.name in status["bad"] and "SHA-256" in status["bad"]
    with pytest.raises(Unavailable) as e:
        search(engine2, "bad", "uniq3")
    assert (
        "is not serving" in str(e.value)
        and "lodestar collection rebuild bad" in str(e.value)
        and "restore" in str(e.value)
    )
    with pytest.raises(Unavailable):
        engine2.upsert("bad", [Document("x", "y")])
    assert engine2.stats("bad").status == status["bad"] and engine2.stats("bad").documents == 100
    assert search(engine2, "good", "uniq3")[0].id == "doc-3"  # the others keep serving
    fixed = engine2.rebuild("bad")
    assert fixed.status == "ok" and fixed.index_vectors == 100
    assert snapshot_results(engine2, "bad") == want
    engine3 = reopen(engine2)
    assert engine3.status() == {"bad": "ok", "good": "ok"}
    engine3.close()


def test_restore_from_a_backup(engine: RetrievalEngine, tmp_path: Path) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.create(CollectionConfig(name="other"))
    engine.upsert("c", corpus(50))
    engine.snapshot("c")
    backup = tmp_path / "backup"
    shutil.copytree(engine.root / "c" / "snapshot", backup)
    engine.upsert("c", [Document("after", "written after the backup uniq500")])
    engine.close()
    flip_byte(engine.root / "c" / "snapshot", "dense")
    engine2 = RetrievalEngine(engine.root, engine.embedder)
    assert engine2.status()["c"].startswith("corrupt")
    stats = engine2.restore("c", backup)
    assert stats.status == "ok" and stats.documents == 51 and stats.index_vectors == 51
    assert search(engine2, "c", "uniq500")[0].id == "after"  # replayed past the backup
    engine2.snapshot("other")
    with pytest.raises(InvalidInput, match="another document store"):
        engine2.restore("c", engine2.root / "other" / "snapshot")
    flip_byte(backup, "sparse")
    with pytest.raises(InvalidInput, match="cannot restore 'c': .*SHA-256"):
        engine2.restore("c", backup)
    assert engine2.status()["c"] == "ok"
    engine2.close()


def test_restore_reads_only_from_the_restore_dirs(engine: RetrievalEngine, tmp_path: Path) -> None:
    """LODESTAR_RESTORE_DIRS: Restore reads no other folder of the server (a client could otherwise
    probe its files, or make it read a large one), climbing out with .. included."""
    engine.create(CollectionConfig(name="c"))
    engine.upsert("c", corpus(5))
    engine.snapshot("c")
    allowed = tmp_path / "backups"
    shutil.copytree(engine.root / "c" / "snapshot", allowed / "c1")
    engine.close()
    fenced = RetrievalEngine(engine.root, engine.embedder, restore_dirs=(allowed,))
    try:
        for path in (engine.root / "c" / "snapshot", allowed / ".." / "collections" / "c" / "snapshot", Path("/etc")):
            with pytest.raises(InvalidInput, match="snapshots are read only from .*backups .LODESTAR_RESTORE_DIRS."):
                fenced.restore("c", path)
        assert fenced.restore("c", allowed / "c1").documents == 5
    finally:
        fenced.close()


def test_automatic_snapshots_bound_the_replay(engine: RetrievalEngine) -> None:
    engine.snapshot_every = 10
    engine.create(CollectionConfig(name="c"))
    for i in range(25):
        engine.upsert("c", [Document(f"d{i}", f"text number uniq{i}")])
    manifest = json.loads((engine.root / "c" / "snapshot" / MANIFEST).read_text())
    assert manifest["seq"] == 20 and manifest["index_vectors"] == 20
    store = engine.catalog.collections["c"].store
    assert store is not None and store.touched_since(0).tolist() == [21, 22, 23, 24, 25]
    engine2 = reopen(engine, close=False)
    assert engine2.stats("c").documents == 25 and search(engine2, "c", "uniq24")[0].id == "d24"
    engine2.close()


def test_leftovers_of_interrupted_create_and_drop_are_cleaned(tmp_path: Path, embedder: FakeEmbedder) -> None:
    root = tmp_path / "collections"
    (root / ".create-x-1234").mkdir(parents=True)
    (root / ".drop-y-5678").mkdir()
    (root / ".drop-y-5678" / "store.sqlite3").write_bytes(b"junk")
    e = RetrievalEngine(root, embedder)
    assert list(root.iterdir()) == [] and e.list() == []
    e.close()


def test_unreadable_store_is_reported_not_fatal(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="broken"))
    engine.create(CollectionConfig(name="fine"))
    engine.close()
    (engine.root / "broken" / "store.sqlite3").write_bytes(b"this is not a database" * 100)
    e = RetrievalEngine(engine.root, engine.embedder)
    assert e.status()["fine"] == "ok"
    assert e.status()["broken"].startswith("corrupt: the document store cannot be opened")
    with pytest.raises(Unavailable):
        e.config("broken")
    with pytest.raises(Unavailable, match="cannot be rebuilt"):
        e.rebuild("broken")
    assert e.stats("broken").status.startswith("corrupt")
    e.drop("broken")
    assert e.status() == {"fine": "ok"}
    e.close()


def test_damaged_store_pages_mark_the_collection_not_the_engine(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="broken"))
    engine.create(CollectionConfig(name="fine"))
    engine.upsert("broken", corpus(20))
    engine.upsert("fine", corpus(20))
    engine.close()
    db = engine.root / "broken" / "store.sqlite3"
    conn = sqlite3.connect(db)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[(root - 1) * page : root * page] = b"\xff" * page  # config and meta still read: the store opens
    db.write_bytes(bytes(raw))
    e = RetrievalEngine(engine.root, engine.embedder)  # raised DatabaseError: no collection served
    assert e.status()["fine"] == "ok" and search(e, "fine", "uniq3")[0].id == "doc-3"
    status = e.status()["broken"]
    assert status.startswith("corrupt: the document store cannot be read") and "backup" in status
    with pytest.raises(Unavailable, match="not serving"):
        search(e, "broken", "uniq3")
    e.close()


def test_full_disk_refuses_clearly_and_keeps_serving(engine: RetrievalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.upsert("c", corpus(20))
    engine.snapshot("c")
    store = engine.catalog.collections["c"].store
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")
    big = [Document(f"big{i}", " ".join(f"w{j}" for j in range(3000))) for i in range(5)]
    with pytest.raises(Overloaded, match="out of disk space .*nothing of this write was stored"):
        engine.upsert("c", big)
    store._writer.execute("PRAGMA max_page_count = 1073741823")

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    engine.upsert("c", [Document("late", "written later uniq777")])
    monkeypatch.setattr("lodestar.retrieve.snapshot.write_atomic", full)
    for call in (lambda: engine.snapshot("c"), lambda: engine.rebuild("c")):
        with pytest.raises(Overloaded, match="out of disk space writing the snapshot of collection 'c'"):
            call()
        assert engine.status()["c"] == "ok" and search(engine, "c", "uniq777")[0].id == "late"
    monkeypatch.undo()
    assert engine.stats("c").documents == 21
    engine2 = reopen(engine)  # the older snapshot plus the log still hold every acknowledged write
    assert engine2.status()["c"] == "ok" and search(engine2, "c", "uniq777")[0].id == "late"
    engine2.close()


def test_restore_refuses_a_collection_the_model_cannot_serve(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.upsert("c", corpus(5))
    engine.snapshot("c")
    engine.close()
    narrow = FakeEmbedder()
    narrow.backbone = type("Narrow", (), {"hidden_size": D // 2, "model_id": "fake-16"})()
    e = RetrievalEngine(engine.root, narrow)
    assert e.status()["c"].startswith("incompatible")
    with pytest.raises(
        Unavailable, match="cannot be restored with this model: it holds 32-dim vectors, the model gives 16"
    ):
        e.restore("c", engine.root / "c" / "snapshot")  # it set the status to "ok"
    assert e.status()["c"].startswith("incompatible")
    with pytest.raises(Unavailable, match="cannot be rebuilt with this model"):
        e.rebuild("c")
    e.close()


def test_stats_fields(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", index="IVF4,Flat", dimensions=16, chunk_tokens=4, chunk_overlap=1))
    engine.upsert("c", [Document("a", "one two three four five six seven"), Document("b", "eight")])
    s = engine.stats("c")
    assert (s.name, s.documents, s.chunks, s.index, s.index_vectors, s.dimensions, s.sparse, s.status) == (
        "c",
        2,
        3,
        "IVF4,Flat",
        3,
        16,
        "bm25",
        "ok",
    )
    assert s.trained is False and s.note and s.bytes > 0
    engine.snapshot("c")
    assert engine.stats("c").bytes > 0


def test_closed_engine_refuses_work(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c"))
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(Unavailable, match="closed"):
        engine.search("c", SearchRequest(queries=["x"]))
    with pytest.raises(Unavailable, match="closed"):
        engine.create(CollectionConfig(name="d"))


def test_concurrent_writers_and_searchers(engine: RetrievalEngine) -> None:
    engine.create(CollectionConfig(name="c", index="HNSW32"))
    engine.upsert("c", corpus(50))
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(10):
                engine.upsert("c", [Document(f"t{t}-{i}", f"thread {t} item uniq{1000 + t * 100 + i}")])
                if i % 3 == 0:
                    engine.delete("c", [f"t{t}-{i}"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def searcher() -> None:
        try:
            for _ in range(20):
                for hits in engine.search(
                    "c", SearchRequest(queries=["uniq5", "thread item"], k=5, retriever="hybrid")
                ):
                    assert len(ids(hits)) == len(set(ids(hits)))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)] + [
        threading.Thread(target=searcher) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    s = engine.stats("c")
    assert s.documents == 50 + 3 * 6 and s.index_vectors == s.chunks == s.documents
