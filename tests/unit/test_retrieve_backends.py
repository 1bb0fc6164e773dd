"""The collection suite on both backends: `faiss` (embedded) and `milvus` (a Milvus Lite server
process the session starts, bench/milvus_lite.py). The same documents, filters, upserts, deletes and
searches give the same ids in the same order on exact indexes; what Milvus cannot do is refused
with FAILED_PRECONDITION naming the backend; filter keys and values are matched literally."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_retrieve_engine import D, FakeEmbedder, corpus  # tests/unit is on sys.path

from lodestar.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, Unavailable
from lodestar.retrieve.backends.milvus_store import MilvusOptions
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.types import CollectionConfig, Document, Filter, SearchRequest

BACKENDS = ["faiss", "milvus"]
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # it logs every refused call at ERROR


def drop_all(engine: RetrievalEngine) -> None:
    for s in engine.list():
        engine.drop(s.name)


@pytest.fixture
def engine(tmp_path: Path, milvus_uri: str) -> Iterator[RetrievalEngine]:
    """An engine with both backends; the shared Milvus is emptied before and after each test."""
    e = RetrievalEngine(tmp_path / "collections", FakeEmbedder(), milvus=MilvusOptions(milvus_uri))
    drop_all(e)
    yield e
    drop_all(e)
    e.close()


def ids(engine: RetrievalEngine, name: str, query: str, **kw: Any) -> list[str]:
    return [h.id for h in engine.search(name, SearchRequest(queries=[query], **kw))[0]]


def both(engine: RetrievalEngine, docs: list[Document], **config: Any) -> tuple[str, str]:
    """The same documents in a FAISS collection and a Milvus one."""
    for backend in BACKENDS:
        engine.create(CollectionConfig(name=f"c-{backend}", backend=backend, **config))
        engine.upsert(f"c-{backend}", docs)
    return "c-faiss", "c-milvus"


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_list_stats_drop(engine: RetrievalEngine, backend: str) -> None:
    stats = engine.create(CollectionConfig(name="a.b-c", backend=backend, index="HNSW32"))
    assert (stats.name, stats.documents, stats.chunks, stats.dimensions, stats.index, stats.status) == (
        "a.b-c",
        0,
        0,
        D,
        "HNSW32",
        "ok",
    )
    assert engine.config("a.b-c").backend == backend
    for other in BACKENDS:  # a name is taken across backends
        with pytest.raises(AlreadyExists, match="'a.b-c' already exists"):
            engine.create(CollectionConfig(name="a.b-c", backend=other))
    assert engine.upsert("a.b-c", corpus(12)) == (12, 12)
    s = engine.stats("a.b-c")
    assert (s.documents, s.chunks, s.index_vectors) == (12, 12, 12)
    assert [x.name for x in engine.list()] == ["a.b-c"]
    engine.drop("a.b-c")
    assert engine.list() == []
    with pytest.raises(NotFound, match="'a.b-c' does not exist"):
        engine.stats("a.b-c")


@pytest.mark.parametrize("backend", BACKENDS)
def test_upsert_replace_delete_get(engine: RetrievalEngine, backend: str) -> None:
    engine.create(CollectionConfig(name="c", backend=backend, chunk_tokens=4, chunk_overlap=1))
    docs = corpus(20)
    assert engine.upsert("c", docs)[0] == 20
    got = engine.get("c", ["doc-3", "missing", "doc-3"])
    assert got[0] == docs[3] and got[1] is None and got[2] == docs[3]
    assert ids(engine, "c", "uniq7")[0] == "doc-7"
    engine.upsert("c", [Document("doc-7", "completely different words here now", {"n": -1})])  # fewer chunks
    assert "doc-7" not in ids(engine, "c", "uniq7", k=20, retriever="sparse")
    assert ids(engine, "c", "completely different", k=1) == ["doc-7"]
    assert engine.get("c", ["doc-7"])[0] == Document("doc-7", "completely different words here now", {"n": -1})
    assert engine.delete("c", ["doc-7", "doc-8", "nope"]) == 2
    assert engine.get("c", ["doc-7", "doc-8"]) == [None, None]
    assert engine.stats("c").documents == 18
    assert not {"doc-7", "doc-8"} & set(ids(engine, "c", "uniq8 completely", k=20, retriever="sparse"))
    assert len(ids(engine, "c", "uniq8 completely", k=20, retriever="hybrid")) == 18
    with pytest.raises(InvalidInput, match="ids must be unique within a batch"):
        engine.upsert("c", [Document("x", "a"), Document("x", "b")])


def same_hits(engine: RetrievalEngine, faiss: str, milvus: str, queries: list[str], **kw: Any) -> None:
    for q in queries:
        want = engine.search(faiss, SearchRequest(queries=[q], k=10, **kw))[0]
        got = engine.search(milvus, SearchRequest(queries=[q], k=10, **kw))[0]
        assert [h.id for h in got] == [h.id for h in want], (q, kw)
        assert [h.chunk for h in got] == [h.chunk for h in want], (q, kw)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-4, abs=1e-5)
        assert [(h.text, h.chunk_text, h.metadata) for h in got] == [(h.text, h.chunk_text, h.metadata) for h in want]


QUERIES = ["uniq3 w5", "w1 w2 w3", "uniq40 uniq41", "w7"]


def test_exact_dense_search_over_chunks_gives_the_same_hits(engine: RetrievalEngine) -> None:
    faiss, milvus = both(engine, corpus(60), chunk_tokens=5, chunk_overlap=2)
    same_hits(engine, faiss, milvus, QUERIES)
    same_hits(engine, faiss, milvus, QUERIES, filters=(Filter("even", "eq", True), Filter("n", "lt", 40)))


def test_sparse_and_hybrid_give_the_same_hits(engine: RetrievalEngine) -> None:
    """Documents of distinct lengths (unique filler words), so no two BM25 scores tie: the order of
    tied documents is each engine's own."""
    docs = corpus(60)
    for i, d in enumerate(docs):
        d.text += "".join(f" x{i}y{j}" for j in range(i))
    faiss, milvus = both(engine, docs, chunk_tokens=0)
    for kw in (
        {"retriever": "sparse"},
        {"retriever": "hybrid"},
        {"retriever": "hybrid", "fusion": "weighted", "alpha": 0.3},
        {"retriever": "hybrid", "filters": (Filter("n", "in", [1, 2, 3, 44, 45]),)},
    ):
        same_hits(engine, faiss, milvus, QUERIES, **kw)
    # Filtered BM25: Milvus Lite takes BM25's statistics (N, df, average length) over the rows the
    # filter admits, Lodestar over every live chunk, so scores and the order can differ; the
    # documents matched are the same
    for q in QUERIES:
        request = SearchRequest(queries=[q], k=60, retriever="sparse", filters=(Filter("even", "ne", True),))
        want = {h.id for h in engine.search(faiss, request)[0]}
        assert {h.id for h in engine.search(milvus, request)[0]} == want and want


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_every_metric_matches_faiss(engine: RetrievalEngine, metric: str) -> None:
    faiss, milvus = both(engine, corpus(30), metric=metric, sparse="none")
    for q in ("uniq5 w3", "w9"):
        want = engine.search(faiss, SearchRequest(queries=[q], k=8))[0]
        got = engine.search(milvus, SearchRequest(queries=[q], k=8))[0]
        assert [h.id for h in got] == [h.id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-4, abs=1e-5)


FILTERS = [
    Filter("n", "eq", 4),
    Filter("n", "ne", 4),
    Filter("n", "in", [1, 5, 9]),
    Filter("n", "nin", [1, 5, 9]),
    Filter("n", "gt", 25),
    Filter("n", "gte", 25),
    Filter("n", "lt", 3),
    Filter("n", "lte", 3),
    Filter("even", "eq", True),
    Filter("even", "eq", 1),  # a number never equals a boolean
    Filter("tag", "eq", None),  # null or missing
    Filter("tag", "ne", None),
    Filter("tag", "eq", "b"),
    Filter("tag", "gte", "b"),
    Filter("tag", "lt", "b"),
    Filter("tag", "nin", ["a"]),
    Filter("tag", "in", []),
    Filter("tag", "nin", []),
]


def test_every_filter_operator_selects_the_same_documents(engine: RetrievalEngine) -> None:
    docs = corpus(30)
    for i, d in enumerate(docs):
        if i % 3:
            d.metadata["tag"] = "abc"[i % 3 :][:1] if i % 5 else None
    faiss, milvus = both(engine, docs, sparse="none")
    for f in FILTERS:
        want = ids(engine, faiss, "w1 w2", k=30, filters=(f,))
        assert ids(engine, milvus, "w1 w2", k=30, filters=(f,)) == want, f


INJECTIONS = [
    'x" or chunk >= 0 or "',
    "a\\",
    '\\" or true or \\"',
    "]) or (1 == 1",
    "x' or '1' == '1",
    "line\nbreak\ttab",
    "é€😀 && || != in [1]",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_filter_keys_and_values_are_matched_literally(engine: RetrievalEngine, backend: str) -> None:
    engine.create(CollectionConfig(name="c", backend=backend, sparse="none"))
    docs = [Document(f"d{i}", f"text {i}", {"k": v, "]['k' or ": v, "n": i}) for i, v in enumerate(INJECTIONS)]
    docs.append(Document("plain", "text plain", {"k": "plain", "n": 99}))
    engine.upsert("c", docs)
    for i, v in enumerate(INJECTIONS):
        for key in ("k", "]['k' or "):
            assert ids(engine, "c", "text", k=20, filters=(Filter(key, "eq", v),)) == [f"d{i}"], (key, v)
        assert f"d{i}" not in ids(engine, "c", "text", k=20, filters=(Filter("k", "ne", v),))
        assert ids(engine, "c", "text", k=20, filters=(Filter("k", "in", [v, "nothing"]),)) == [f"d{i}"]
    assert ids(engine, "c", "text", k=20, filters=(Filter("k", "gt", INJECTIONS[0] + "\\"),))  # no error, a range
    with pytest.raises(InvalidInput, match="no double quote"):
        ids(engine, "c", "text", filters=(Filter('k"]', "eq", 1),))


def test_milvus_refuses_what_it_cannot_do_naming_the_backend(engine: RetrievalEngine, tmp_path: Path) -> None:
    engine.create(CollectionConfig(name="m", backend="milvus"))
    engine.upsert("m", corpus(3))
    for call in (
        lambda: engine.snapshot("m"),
        lambda: engine.restore("m", tmp_path),
        lambda: engine.rebuild("m"),
    ):
        with pytest.raises(FailedPrecondition, match="backend milvus.*milvus-backup"):
            call()
    with pytest.raises(FailedPrecondition, match="query_idf is not available on backend milvus"):
        engine.create(CollectionConfig(name="l", backend="milvus", sparse="learned"))
    with pytest.raises(InvalidInput, match="no Milvus counterpart: on backend milvus use one of Flat, HNSW"):
        engine.create(CollectionConfig(name="p", backend="milvus", index="PCA16,Flat"))
    with pytest.raises(InvalidInput, match="unknown backend 'qdrant': valid backends are faiss, milvus"):
        engine.create(CollectionConfig(name="q", backend="qdrant"))
    with pytest.raises(InvalidInput, match="a Milvus VARCHAR field holds at most 65535"):
        engine.upsert("m", [Document("big", "word " * 20000)])
    assert engine.stats("m").documents == 3


def test_milvus_runs_every_fusion_and_refuses_what_calibration_needs(engine: RetrievalEngine) -> None:
    """Hybrid's default (auto) runs calibrate.FALLBACK on Milvus, as on an uncalibrated embedded
    collection, and DBSF is Lodestar's own fusion there too; calibration and dense='none' keep to
    the embedded backend and say so."""
    f, m = both(engine, corpus(12))
    for fusion in ("auto", "dbsf", "rrf", "weighted"):
        assert ids(engine, f, "uniq3", retriever="hybrid", fusion=fusion, k=5) == ids(
            engine, m, "uniq3", retriever="hybrid", fusion=fusion, k=5
        )
    with pytest.raises(FailedPrecondition, match="calibration is not available on backend milvus"):
        engine.calibrate(m)
    with pytest.raises(FailedPrecondition, match="dense='none' is not available on backend milvus"):
        engine.create(CollectionConfig(name="lex", backend="milvus", dense="none"))


def test_without_a_milvus_uri_the_backend_is_refused(tmp_path: Path) -> None:
    e = RetrievalEngine(tmp_path, FakeEmbedder())
    with pytest.raises(FailedPrecondition, match="LODESTAR_MILVUS_URI"):
        e.create(CollectionConfig(name="m", backend="milvus"))
    e.close()


def test_a_stateless_replica_refuses_embedded_collections(tmp_path: Path, milvus_uri: str) -> None:
    e = RetrievalEngine(tmp_path, FakeEmbedder(), milvus=MilvusOptions(milvus_uri), milvus_only=True)
    with pytest.raises(FailedPrecondition, match="stateless replica.*backend milvus"):
        e.create(CollectionConfig(name="local"))
    e.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_servers_search_limits_hold_on_both_backends(tmp_path: Path, milvus_uri: str, backend: str) -> None:
    """max_queries_per_search and max_filters_per_search, as the server sets them, bind every backend."""
    e = RetrievalEngine(tmp_path / "c", FakeEmbedder(), milvus=MilvusOptions(milvus_uri), max_queries=2, max_filters=1)
    drop_all(e)
    try:
        e.create(CollectionConfig(name="lim", backend=backend))
        e.upsert("lim", corpus(4))
        assert len(e.search("lim", SearchRequest(queries=["a", "b"], k=2))) == 2
        with pytest.raises(InvalidInput, match="3 queries in one search; the limit is max_queries_per_search=2"):
            e.search("lim", SearchRequest(queries=["a", "b", "c"], k=2))
        two = [Filter("lang", "eq", "en"), Filter("year", "gte", 2000)]
        with pytest.raises(InvalidInput, match="2 filters in one search; the limit is max_filters_per_search=1"):
            e.search("lim", SearchRequest(queries=["a"], k=2, filters=two))
    finally:
        drop_all(e)
        e.close()


def test_unreachable_milvus_is_unavailable(tmp_path: Path) -> None:
    from lodestar.bench.milvus_lite import free_port

    e = RetrievalEngine(tmp_path, FakeEmbedder(), milvus=MilvusOptions(f"http://127.0.0.1:{free_port()}", timeout_s=2))
    with pytest.raises(Unavailable, match="Milvus is unreachable"):
        e.create(CollectionConfig(name="m", backend="milvus"))
    with pytest.raises(Unavailable, match="Milvus is unreachable"):
        e.list()  # a listing covers every backend
    e.close()


def test_two_engines_on_one_milvus_share_collections(engine: RetrievalEngine, tmp_path: Path, milvus_uri: str) -> None:
    """Two replicas: what one creates, writes or drops, the other sees at once."""
    other = RetrievalEngine(tmp_path / "other", FakeEmbedder(), milvus=MilvusOptions(milvus_uri))
    engine.create(CollectionConfig(name="shared", backend="milvus"))
    assert [s.name for s in other.list()] == ["shared"]
    other.upsert("shared", corpus(5))
    assert ids(engine, "shared", "uniq2", k=1) == ["doc-2"]
    engine.drop("shared")
    with pytest.raises(NotFound):
        other.search("shared", SearchRequest(queries=["uniq2"]))
    engine.create(
        CollectionConfig(name="shared", backend="milvus", sparse="none")
    )  # re-created: a new Milvus collection
    engine.upsert("shared", corpus(3))
    assert ids(other, "shared", "uniq1", k=1) == ["doc-1"]  # other's cached record was replaced on the miss
    engine.drop("shared")
    engine.create(CollectionConfig(name="shared", backend="milvus", metric="ip"))
    assert other.config("shared").metric == "ip"  # a config is read fresh
    other.search("shared", SearchRequest(queries=["x"]))  # caches the record ...
    engine.drop("shared")
    engine.create(CollectionConfig(name="shared", backend="milvus"))  # ... which is now stale
    assert other.upsert("shared", corpus(2)) == (2, 2)  # replaced on the first miss, written to the new one
    assert engine.get("shared", ["doc-1"])[0] is not None
    assert other.delete("shared", ["doc-0"]) == 1
    other.close()


def test_learned_sparse_on_milvus_matches_faiss(tiny_engine, tmp_path: Path, milvus_uri: str) -> None:  # type: ignore[no-untyped-def]
    """SPLADE weights from a tiny real model: inner product in Milvus ranks as the impact index does
    (query_idf off, which Milvus cannot compute); the extras that need statistics are refused."""
    from test_retrieve_learned import CFG, DOCS

    e = RetrievalEngine(tmp_path / "collections", tiny_engine, milvus=MilvusOptions(milvus_uri))
    drop_all(e)
    for backend in BACKENDS:
        e.create(CollectionConfig(**{**CFG.__dict__, "name": backend, "backend": backend, "query_idf": False}))
        e.upsert(backend, DOCS)
    for d in DOCS:
        for retriever in ("sparse", "hybrid"):
            request = SearchRequest([d.text], k=3, retriever=retriever)
            want, got = (e.search(b, request)[0] for b in BACKENDS)
            assert [h.id for h in got] == [h.id for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-4, abs=1e-5)
    for option in ({"feedback_chunks": 2}, {"length_norm": 0.5}):
        with pytest.raises(FailedPrecondition, match="not available on backend milvus"):
            e.search("milvus", SearchRequest(["guitar"], retriever="sparse", **option))  # type: ignore[arg-type]
    drop_all(e)
    e.close()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("index", ["HNSW32", "IVF8,Flat"])
def test_approximate_indexes_give_the_same_ndcg_on_a_beir_slice(engine: RetrievalEngine, index: str) -> None:
    """200 Cranfield abstracts, 20 judged queries (tests/fixtures/cranfield_slice): approximate dense
    search on Milvus scores nDCG@10 within 0.005 of FAISS with the same index type; hybrid too."""
    from lodestar.retrieve.eval.beir import ndcg_at, read_beir

    docs, queries, qrels = read_beir(FIXTURES / "cranfield_slice")
    faiss, milvus = both(engine, docs, index=index, chunk_tokens=64, chunk_overlap=8)
    judged = [q for q in queries if q in qrels]
    for retriever in ("dense", "hybrid"):
        request = SearchRequest(queries=[queries[q] for q in judged], k=10, retriever=retriever)
        scores = {}
        for name in (faiss, milvus):
            results = engine.search(name, request)
            scores[name] = sum(ndcg_at([h.id for h in hits], qrels[q]) for q, hits in zip(judged, results)) / len(
                judged
            )
        assert scores[milvus] == pytest.approx(scores[faiss], abs=0.005), (retriever, scores)
        assert scores[faiss] > 0.05  # the fake embedder finds something: the comparison means something


def test_an_indexing_job_writes_into_a_milvus_collection(tiny_engine, tmp_path: Path, milvus_uri: str) -> None:  # type: ignore[no-untyped-def]
    """The coordinator's job manager (in-process dispatch here) commits prepared chunks to Milvus."""
    import time

    from test_job_store import lines

    from lodestar.retrieve.jobs import JobManager, JobsConfig

    retrieval = RetrievalEngine(tmp_path / "collections", tiny_engine, milvus=MilvusOptions(milvus_uri))
    drop_all(retrieval)
    retrieval.create(CollectionConfig(name="docs", mode="mean", chunk_tokens=0, backend="milvus"))
    jobs = JobManager(retrieval, tiny_engine, JobsConfig(data_dir=tmp_path, chunk_docs=3))
    try:
        job = jobs.open("docs", "mem")
        jobs.stage(job, lines(7) + [(8, b'{"id": "x"}')])
        jobs.seal(job)
        deadline = time.monotonic() + 60
        while not jobs.get(job).finished and time.monotonic() < deadline:
            time.sleep(0.05)
        info = jobs.get(job)
        assert info.state == "done" and info.written == 7 and info.errors == 1
        assert retrieval.stats("docs").documents == 7
    finally:
        jobs.close()
        drop_all(retrieval)
        retrieval.close()
