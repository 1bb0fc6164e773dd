"""Learned-sparse collections with a tiny real model: SPLADE vectors are stored with the chunks,
searched through the impact index, survive snapshots, reopening and rebuilds, and go with deletes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.prepare import prepare
from lodestar.retrieve.types import CollectionConfig, Document, SearchRequest

DOCS = [
    Document("guitar", "A man plays an acoustic guitar on a small stage."),
    Document("bonds", "Government bond yields climbed to their highest level in a decade."),
    Document("soccer", "The football team won the championship after a penalty shootout."),
]
CFG = CollectionConfig(
    name="learned", mode="mean", sparse="learned", sparse_mode="echo", chunk_tokens=0, sparse_top_k=64, query_top_k=16
)


def search(engine: RetrievalEngine, query: str, retriever: str = "sparse") -> list[str]:
    return [h.id for h in engine.search("learned", SearchRequest([query], k=3, retriever=retriever))[0]]


def test_learned_sparse_collection_round_trip(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "collections"
    engine = RetrievalEngine(root, tiny_engine)
    engine.create(CFG)
    engine.upsert("learned", DOCS)
    exact = search(engine, DOCS[1].text)
    assert exact[0] == "bonds" and set(exact) <= {d.id for d in DOCS}  # a document finds itself first
    hybrid = search(engine, DOCS[2].text, "hybrid")
    assert hybrid and hybrid[0] == "soccer"
    engine.snapshot("learned")
    engine.close()

    again = RetrievalEngine(root, tiny_engine)  # from the verified snapshot
    assert search(again, DOCS[1].text) == exact
    again.rebuild("learned")  # from the store: nothing re-embedded
    assert search(again, DOCS[1].text) == exact
    assert again.delete("learned", ["bonds"]) == 1
    assert "bonds" not in search(again, DOCS[1].text)
    stats = again.stats("learned")
    assert stats.sparse == "learned" and stats.documents == 2
    again.close()


def test_learned_sparse_refusals(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = RetrievalEngine(tmp_path / "c", tiny_engine)
    for bad, words in (
        ({"sparse_top_k": 0}, "sparse_top_k=0 is out of range"),
        ({"sparse_mode": "nope"}, "unknown mode 'nope'"),
        ({"sparse_adapter": "no-such-adapter"}, "unknown adapter"),
    ):
        with pytest.raises(InvalidInput, match=words):
            engine.create(CollectionConfig(**{**CFG.__dict__, **bad}))
    engine.create(CFG)
    prepared = prepare(tiny_engine, CollectionConfig(**{**CFG.__dict__, "sparse": "bm25"}), 64, DOCS[:1])
    with pytest.raises(InvalidInput, match="learned-sparse vectors are needed"):
        engine.upsert_prepared("learned", prepared)
    assert engine.stats("learned").documents == 0
    engine.close()


def test_query_idf_default_stored_and_kept_for_older_collections(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import sqlite3

    from lodestar.retrieve.store import DB_NAME
    from lodestar.retrieve.v1 import retrieve_pb2 as rpb
    from lodestar.services.retrieve import config_from_pb as collection_config
    from lodestar.services.retrieve import config_to_pb as collection_config_pb

    assert collection_config(rpb.CollectionConfig(name="a")).query_idf is True  # unset on the wire = on
    off = collection_config(rpb.CollectionConfig(name="a", query_idf=False))
    assert off.query_idf is False and collection_config(collection_config_pb(off)).query_idf is False

    root = tmp_path / "collections"
    engine = RetrievalEngine(root, tiny_engine)
    engine.create(CFG)
    engine.upsert("learned", DOCS)
    with_idf = engine.search("learned", SearchRequest([DOCS[0].text], k=3, retriever="sparse"))[0]
    engine.close()
    # a collection created before query_idf existed has no such key: it keeps the plain dot product
    db = sqlite3.connect(root / "learned" / DB_NAME)
    stored = json.loads(db.execute("SELECT json FROM config WHERE id = 1").fetchone()[0])
    assert stored["query_idf"] is True
    del stored["query_idf"]
    db.execute("UPDATE config SET json = ? WHERE id = 1", (json.dumps(stored),))
    db.commit()
    db.close()
    again = RetrievalEngine(root, tiny_engine)
    assert again.stats("learned").documents == 3
    assert again.catalog.get("learned").config.query_idf is False  # type: ignore[union-attr]
    plain = again.search("learned", SearchRequest([DOCS[0].text], k=3, retriever="sparse"))[0]
    assert plain[0].id == with_idf[0].id == "guitar"
    assert [h.score for h in plain] != [h.score for h in with_idf]
    again.close()


@pytest.mark.parametrize(
    "bad, words",
    [
        ("repeat", "repeats a term id"),
        ("length", "same length"),
        ("term", "term ids must lie in"),
        ("nan", "weights must be finite"),
    ],
)
def test_worker_sparse_vectors_are_checked_before_they_are_stored(
    tiny_engine, tmp_path: Path, bad: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    """A worker's commit (CommitChunk) carries its own sparse vectors: one the index cannot take is refused
    before the store keeps it; stored, it would fail the apply and every rebuild after it."""
    engine = RetrievalEngine(tmp_path / "c", tiny_engine)
    engine.create(CFG)
    engine.upsert("learned", DOCS[:2])
    before = search(engine, DOCS[1].text)
    prepared = prepare(tiny_engine, CFG, 64, DOCS[2:])
    assert prepared.sparse is not None
    terms, weights = (a.copy() for a in prepared.sparse[0])
    if bad == "repeat":
        terms[1] = terms[0]
    elif bad == "length":
        weights = weights[:-1]
    elif bad == "term":
        terms[0] = 2**40
    else:
        weights[0] = np.nan
    prepared.sparse[0] = (terms, weights)
    with pytest.raises(InvalidInput, match=words):
        engine.upsert_prepared("learned", prepared)
    assert engine.stats("learned").documents == 2 and engine.catalog.get("learned").status == "ok"  # type: ignore[union-attr]
    assert search(engine, DOCS[1].text) == before
    engine.rebuild("learned")  # the store holds nothing the index refuses
    assert search(engine, DOCS[1].text) == before
    engine.upsert_prepared("learned", prepare(tiny_engine, CFG, 64, DOCS[2:]))  # the good vectors still go in
    assert engine.stats("learned").documents == 3
    engine.close()


def test_pseudo_relevance_feedback_at_search_time(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """feedback_chunks adds the first ranking's best chunks to the query: the query's own best match stays
    first, the scores change, and requests that cannot use it are refused naming the valid values."""
    engine = RetrievalEngine(tmp_path / "c", tiny_engine)
    engine.create(CFG)
    engine.upsert("learned", DOCS)

    def run(**fb) -> list:  # type: ignore[no-untyped-def]
        return engine.search("learned", SearchRequest([DOCS[1].text], k=3, retriever="sparse", **fb))[0]

    plain, fed = run(), run(feedback_chunks=1, feedback_weight=2.0)
    assert fed[0].id == plain[0].id == "bonds"
    assert [round(h.score, 4) for h in fed] != [round(h.score, 4) for h in plain]
    hybrid = engine.search("learned", SearchRequest([DOCS[2].text], k=3, retriever="hybrid", feedback_chunks=2))[0]
    assert hybrid[0].id == "soccer"
    for bad, words in (
        ({"feedback_chunks": 101}, r"feedback_chunks=101 is out of range: use 0..100"),
        ({"feedback_chunks": -1}, r"feedback_chunks=-1 is out of range"),
        (
            {"feedback_chunks": 2, "feedback_weight": 0.0},
            r"feedback_weight=0.0 is out of range: use a number in \(0, 10\]",
        ),
        ({"feedback_chunks": 2, "feedback_weight": float("nan")}, "feedback_weight=nan is out of range"),
        ({"feedback_chunks": 2, "retriever": "dense"}, "feedback_chunks needs a learned sparse side searched"),
    ):
        with pytest.raises(InvalidInput, match=words):
            engine.search("learned", SearchRequest([DOCS[1].text], k=3, **{"retriever": "sparse", **bad}))
    engine.create(CollectionConfig(name="plain", sparse="bm25", chunk_tokens=0))
    with pytest.raises(InvalidInput, match="sparse='bm25'"):
        engine.search("plain", SearchRequest(["bonds"], k=3, retriever="sparse", feedback_chunks=3))
    engine.close()


def test_chunk_length_normalisation_at_search_time(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """length_norm divides each chunk's learned-sparse score by BM25's length factor over its stored
    vector's terms: scores change by exactly that factor, with feedback too, and bad values are refused."""
    engine = RetrievalEngine(tmp_path / "c", tiny_engine)
    engine.create(CFG)
    engine.upsert("learned", DOCS)
    c = engine.catalog.get("learned")
    stored = c.store.chunk_sparse(c.sparse.ids(), reader=True)  # type: ignore[union-attr]  # one chunk each, in upsert order
    lengths = {d.id: len(terms) for d, (terms, _) in zip(DOCS, stored)}
    assert len(set(lengths.values())) > 1  # the vectors' lengths differ, so the factor does
    mean = sum(lengths.values()) / len(lengths)

    def run(**kw) -> dict[str, float]:  # type: ignore[no-untyped-def]
        return {
            h.id: h.score
            for h in engine.search("learned", SearchRequest([DOCS[1].text], k=3, retriever="sparse", **kw))[0]
        }

    plain, normed = run(), run(length_norm=0.5)
    assert normed == pytest.approx({i: s / (0.5 + 0.5 * lengths[i] / mean) for i, s in plain.items()}, rel=1e-5)
    assert run(length_norm=0.5, feedback_chunks=2) != run(feedback_chunks=2)
    hybrid = engine.search("learned", SearchRequest([DOCS[2].text], k=3, retriever="hybrid", length_norm=1.0))[0]
    assert hybrid[0].id == "soccer"
    for bad, words in (
        ({"length_norm": 1.5}, r"length_norm=1.5 is out of range: use 0..1"),
        ({"length_norm": float("nan")}, "length_norm=nan is out of range"),
        ({"length_norm": 0.5, "retriever": "dense"}, "length_norm needs a learned sparse side searched"),
    ):
        with pytest.raises(InvalidInput, match=words):
            engine.search("learned", SearchRequest([DOCS[1].text], k=3, **{"retriever": "sparse", **bad}))
    engine.close()
