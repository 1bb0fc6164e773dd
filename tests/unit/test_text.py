"""The shared text analyzer (lodestar.text): words, stop words and light plural stemming."""

from __future__ import annotations

from lodestar.text import STOPWORDS, analyze, stem


def test_analyze() -> None:
    assert analyze("The Cat's QUERIES, about FAISS-indexes_and caches!") == ["cat", "query", "faiss", "index", "cach"]
    assert analyze("Über große Straße 3.14") == ["über", "große", "straße", "3", "14"]
    assert analyze("the and of to") == [] and analyze("") == []
    assert {"the", "and", "of", "is", "which", "would"} <= STOPWORDS and 120 <= len(STOPWORDS) <= 200
    pairs = {
        "books": "book",
        "queries": "query",
        "boxes": "box",
        "classes": "class",
        "status": "status",
        "analysis": "analysis",
        "sizes": "size",
        "matches": "match",
        "cache": "cach",
        "bus": "bus",
    }
    assert {w: stem(w) for w in pairs} == pairs
