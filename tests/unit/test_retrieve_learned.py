"""Learned-sparse collections with a tiny real model: SPLADE vectors are stored with the chunks,
searched through the impact index, survive snapshots, reopening and rebuilds, and go with deletes."""

from __future__ import annotations

from pathlib import Path

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
CFG = CollectionConfig(name="learned", mode="mean", sparse="learned", sparse_mode="echo", chunk_tokens=0,
                       sparse_top_k=64, query_top_k=16)


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
