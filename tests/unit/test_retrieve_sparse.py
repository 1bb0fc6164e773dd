"""BM25: rankings known by hand, scores against a direct implementation of the formula,
filters, deletes, segment merges and snapshots."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.bm25 import BM25Index
from lodestar.retrieve.feedback import feedback_query
from lodestar.text import analyze

CORPUS = {
    1: "The cat sat on the mat.",
    2: "Dogs and cats living together",
    3: "the quick brown fox",
    4: "cat cat cat",
}


def reference_scores(docs: dict[int, str], query: str, k1: float = 1.5, b: float = 0.75) -> dict[int, float]:
    """BM25 written straight from the formula, one document at a time (the slow, obvious way)."""
    bags = {i: Counter(analyze(t)) for i, t in docs.items()}
    lengths = {i: sum(bag.values()) for i, bag in bags.items()}
    n = len(docs)
    avg = sum(lengths.values()) / n
    out: dict[int, float] = {}
    for term in analyze(query):
        df = sum(1 for bag in bags.values() if term in bag)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, bag in bags.items():
            tf = bag.get(term, 0)
            if tf:
                out[i] = out.get(i, 0.0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[i] / avg))
    return out


def ranked(scores: dict[int, float], k: int) -> list[int]:
    """Ids best first, ties by id."""
    return [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def small() -> BM25Index:
    index = BM25Index()
    index.add(np.array(list(CORPUS)), list(CORPUS.values()))
    return index


def test_known_ranking_and_hand_computed_scores() -> None:
    index = small()
    assert index.count == 4
    (cat,) = index.search(["cat"], 10)
    assert [i for i, _ in cat] == [4, 1, 2]  # three hits beat one; a shorter document beats a longer one
    # by hand: N=4, df(cat)=3, lengths 3,4,3,3 -> avg 3.25, idf = ln(1 + 1.5/3.5)
    idf = math.log(1 + 1.5 / 3.5)
    want4 = idf * 3 * 2.5 / (3 + 1.5 * (0.25 + 0.75 * 3 / 3.25))
    want1 = idf * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3 / 3.25))
    want2 = idf * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 4 / 3.25))
    assert [s for _, s in cat] == pytest.approx([want4, want1, want2], rel=1e-9)
    (fox_dog,) = index.search(["fox and dogs"], 10)
    assert [i for i, _ in fox_dog] == [3, 2]
    assert fox_dog[0][1] == pytest.approx(math.log(1 + 3.5 / 1.5) * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3 / 3.25)))
    assert index.search(["the of", "zebra", ""], 5) == [[], [], []]


def test_matches_reference_formula_on_a_bigger_corpus() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    docs = {int(i): " ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for i in range(300)}
    index = BM25Index(k1=1.2, b=0.6)
    ids = list(docs)
    for lo in range(0, 300, 17):  # many small adds: exercises segment merges
        index.add(np.array(ids[lo : lo + 17]), [docs[i] for i in ids[lo : lo + 17]])
    assert len(index._segments) <= 1 + math.ceil(math.log2(300 / 17)) + 1
    queries = ["w1 w2", "w3 w3 w40", "w59", "w7 w8 w9 w10 w11"]

    def check() -> None:
        for query, got in zip(queries, index.search(queries, 25)):
            want = reference_scores(docs, query, 1.2, 0.6)
            assert [i for i, _ in got] == ranked(want, 25)
            assert [s for _, s in got] == pytest.approx([want[i] for i, _ in got], rel=1e-6)

    check()
    gone = ids[::3]
    assert index.remove(np.array(gone + [10_000])) == len(gone)
    for i in gone:
        del docs[i]
    check()  # N, df and the average length follow the deletes
    docs.update({i: "w1 w1 w2 fresh" for i in gone[:5]})
    index.add(np.array(gone[:5]), ["w1 w1 w2 fresh"] * 5)  # re-adding removed ids
    check()


def test_allowed_restricts_before_ranking() -> None:
    rng = np.random.default_rng(1)
    words = [f"t{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=20)) for _ in range(500)]
    index = BM25Index()
    index.add(np.arange(500) + 1000, texts)
    allowed = np.array([1003, 1077, 1250, 1499, 1400])
    full = index.search(["t1 t2 t3"], 500)[0]
    (got,) = index.search(["t1 t2 t3"], 3, allowed=np.concatenate([allowed, [7, 1003]]))
    assert [h for h in full if h[0] in set(allowed)][:3] == got  # same scores: the filter does not change idf
    assert index.search(["t1"], 3, allowed=np.array([], dtype=np.int64)) == [[]]
    index.remove(np.array([1003]))
    assert 1003 not in {i for i, _ in index.search(["t1 t2 t3"], 10, allowed=allowed)[0]}


def test_remove_and_re_add() -> None:
    index = small()
    assert index.remove(np.array([4, 4, 99])) == 1
    assert index.remove(np.array([4])) == 0
    assert index.count == 3
    (cat,) = index.search(["cat"], 10)
    assert [i for i, _ in cat] == [1, 2]
    assert cat[0][1] == pytest.approx(reference_scores({i: CORPUS[i] for i in (1, 2, 3)}, "cat")[1])
    index.add(np.array([4]), ["a brown dog"])
    assert [i for i, _ in index.search(["brown dog"], 10)[0]] == [4, 3, 2]
    with pytest.raises(InvalidInput, match="already in the index"):
        index.add(np.array([1]), ["again"])


def test_compaction_after_many_removes() -> None:
    index = BM25Index()
    docs = {i: f"alpha beta{i % 7} gamma{i % 3}" for i in range(3000)}
    index.add(np.arange(3000), list(docs.values()))
    index.remove(np.arange(0, 2900))  # dead slots outnumber live ones: slots renumbered
    assert index._nslots == 100 and index.count == 100
    for i in range(2900):
        del docs[i]
    (got,) = index.search(["beta3 gamma1"], 10)
    want = reference_scores(docs, "beta3 gamma1")
    assert [i for i, _ in got] == ranked(want, 10)
    assert [s for _, s in got] == pytest.approx([want[i] for i, _ in got])


def test_round_trip() -> None:
    index = small()
    index.add(np.array([7, 8]), ["brown cats everywhere", "nothing relevant"])
    index.remove(np.array([2]))
    queries = ["cat", "brown fox", "relevant"]
    before = index.search(queries, 5)
    blob = index.to_bytes()
    assert blob == index.to_bytes()  # deterministic
    again = BM25Index.from_bytes(blob)
    assert again.count == index.count == 5 and (again.k1, again.b) == (1.5, 0.75)
    assert again.search(queries, 5) == before
    assert again.search(queries, 5, allowed=np.array([1, 7])) == index.search(queries, 5, allowed=np.array([1, 7]))
    again.add(np.array([2]), ["cat"])  # keeps working after a restore
    docs = {1: CORPUS[1], 3: CORPUS[3], 4: CORPUS[4], 7: "brown cats everywhere", 8: "nothing relevant", 2: "cat"}
    want = reference_scores(docs, "cat")
    assert again.search(["cat"], 10)[0] == [(i, pytest.approx(want[i])) for i in ranked(want, 10)]
    empty = BM25Index.from_bytes(BM25Index().to_bytes())
    assert empty.count == 0 and empty.search(["cat"], 3) == [[]]
    with pytest.raises(ValueError):
        BM25Index.from_bytes(b"garbage")
    with pytest.raises(ValueError):
        BM25Index.from_bytes(blob[:-3])


def test_ties_and_limits() -> None:
    index = BM25Index()
    index.add(np.array([30, 10, 20]), ["same text", "same text", "same text"])
    assert [i for i, _ in index.search(["text"], 2)[0]] == [10, 20]
    index.add(np.array([40]), [""])  # no tokens: counted, never matched
    assert index.count == 4 and len(index.search(["text"], 10)[0]) == 3
    with pytest.raises(InvalidInput, match="k must be"):
        index.search(["text"], 0)
    with pytest.raises(InvalidInput, match="repeat"):
        index.add(np.array([1, 1]), ["a", "b"])
    with pytest.raises(InvalidInput, match="must match"):
        index.add(np.array([1]), ["a", "b"])
    with pytest.raises(InvalidInput, match="texts must be strings"):
        index.add(np.array([1]), [None])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="b must be between 0 and 1"):
        BM25Index(b=2.0)


def test_rare_terms_in_a_large_corpus() -> None:
    """Few postings against many documents: scored by sorting the candidates, not a dense accumulator."""
    docs = {i: f"filler text number{i % 50}" for i in range(2000)}
    docs.update({5000: "a rare rare word", 5001: "rare", 5002: "word rare filler"})
    index = BM25Index()
    index.add(np.array(list(docs)), list(docs.values()))
    (got,) = index.search(["rare word"], 10)
    want = reference_scores(docs, "rare word")
    assert [i for i, _ in got] == ranked(want, 10) and len(got) == 3
    assert [s for _, s in got] == pytest.approx([want[i] for i, _ in got])


def test_impact_index_dot_products_filters_removal_and_snapshots() -> None:
    from lodestar.retrieve.impact import ImpactIndex

    index = ImpactIndex()
    docs = {
        10: (np.array([1, 5, 9]), np.array([1.0, 2.0, 0.5])),
        11: (np.array([5, 7]), np.array([0.5, 3.0])),
        12: (np.array([2, 0]), np.array([0.0, 1.0])),  # a zero weight is not indexed
    }
    index.add(np.array(list(docs)), list(docs.values()))
    q = (np.array([5, 7]), np.array([1.0, 1.0]))
    assert index.search([q], 3) == [[(11, 3.5), (10, 2.0)]]
    assert index.search([q], 3, allowed=np.array([10, 12])) == [[(10, 2.0)]]
    assert index.search([(np.array([2]), np.array([1.0]))], 3) == [[]]
    assert index.remove(np.array([11, 99])) == 1
    assert index.search([q], 3) == [[(10, 2.0)]]
    again = ImpactIndex.from_bytes(index.to_bytes())
    assert again.search([q], 3) == [[(10, 2.0)]] and again.count == 2
    with pytest.raises(InvalidInput):
        index.add(np.array([10]), [docs[10]])  # already present
    for terms, weights, words in (
        ([1, 1], [1.0, 1.0], "repeats a term id"),
        ([1, 2], [1.0], "same length; got 2 ids and 1 weights"),
        ([-1], [1.0], r"term ids must lie in \[0, 2147483647\)"),
        ([2**31], [1.0], r"term ids must lie in \[0, 2147483647\)"),
        ([1.5], [1.0], "term ids must be integers"),
        ([3], [float("nan")], "weights must be finite"),
        ([3], [float("inf")], "weights must be finite"),
    ):
        with pytest.raises(InvalidInput, match=words):
            index.add(np.array([20]), [(np.array(terms), np.array(weights))])
        with pytest.raises(InvalidInput, match=words):  # a query vector is held to the same rules
            index.search([(np.array(terms), np.array(weights))], 3, idf=True)
    assert index.count == 2 and index.search([q], 3) == [[(10, 2.0)]]  # nothing of the refused vectors stayed
    with pytest.raises(ValueError):
        ImpactIndex.from_bytes(index.to_bytes()[:-2])
    # many documents: the dense accumulator path agrees with a brute-force dot product
    rng = np.random.default_rng(0)
    big = ImpactIndex()
    vecs = []
    for _ in range(300):
        t = rng.choice(50, size=8, replace=False)
        vecs.append((t, rng.random(8).astype(np.float32) + 0.01))
    big.add(np.arange(300), vecs)
    qt, qw = np.arange(50), np.ones(50)
    dense = np.zeros((300, 50))
    for i, (t, w) in enumerate(vecs):
        dense[i, t] = w
    want = np.argsort(-dense.sum(1), kind="stable")[:5]
    assert [i for i, _ in big.search([(qt, qw)], 5)[0]] == want.tolist()


def test_impact_index_idf_weights_query_terms_by_rarity() -> None:
    from lodestar.retrieve.impact import ImpactIndex
    from lodestar.retrieve.postings import idf_weight

    index = ImpactIndex()
    # term 1 is in every document, term 2 in one: equal raw dot products, IDF breaks the tie
    index.add(
        np.array([1, 2, 3, 4]),
        [
            (np.array([1]), np.array([2.0])),
            (np.array([1, 2]), np.array([1.0, 1.0])),
            (np.array([1]), np.array([1.0])),
            (np.array([1]), np.array([1.0])),
        ],
    )
    q = (np.array([1, 2]), np.array([1.0, 1.0]))
    assert [i for i, _ in index.search([q], 2)[0]] == [1, 2]  # 2.0 vs 1.0 + 1.0: the smaller id wins the tie
    got = index.search([q], 4, idf=True)[0]
    assert got[0][0] == 2
    assert got[0][1] == pytest.approx(idf_weight(4, 4) * 1.0 + idf_weight(4, 1) * 1.0)
    assert dict(got)[1] == pytest.approx(idf_weight(4, 4) * 2.0)
    # a filter narrows what is scored, not the statistics
    assert index.search([q], 4, allowed=np.array([2]), idf=True)[0] == [got[0]]
    index.remove(np.array([1, 3]))  # deletes change document frequencies
    assert dict(index.search([q], 4, idf=True)[0])[2] == pytest.approx(idf_weight(2, 2) + idf_weight(2, 1))


@pytest.mark.parametrize("idf", [True, False])
def test_impact_benchmark_agrees_with_exact_scoring(idf: bool) -> None:
    """`lodestar bench sparse`: MaxScore and the plain accumulation return the exact top-k on
    Zipf-shaped vectors, with and without IDF-scaled queries."""
    from lodestar.bench.retrieval import bench_impact, splade_like

    vecs = splade_like(50, 20, 1000, np.random.default_rng(0))
    assert all(t.size == np.unique(t).size <= 20 and (w > 0).all() for t, w in vecs)
    result = bench_impact(sizes=(500,), vocab=1000, doc_nnz=30, query_nnz=8, queries=20, progress=False, idf=idf)
    row = result["sizes"][0]
    assert row["agreement@10"] == 1.0 and row["documents"] == 500 and row["postings"] > 500 * 20
    assert row["accumulation_ms"]["p50"] > 0 and row["maxscore_ms"]["p50"] > 0


@pytest.mark.parametrize("idf", [False, True])
@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("length_norm", [0.0, 0.5])
def test_impact_maxscore_returns_what_plain_accumulation_returns(idf: bool, integer: bool, length_norm: float) -> None:
    """MaxScore pruning is exact: over several segments, with dead slots, filters, skewed weights and
    chunk length normalisation, every query gets the same ids and scores as reading every posting; with
    integer weights many documents tie exactly, and both paths still break the ties alike (by smaller id)."""
    from lodestar.retrieve.impact import ImpactIndex

    rng = np.random.default_rng(7)
    vocab = 400
    p = 1 / np.arange(1, vocab + 1)  # Zipf-shaped term frequencies: long postings for common terms

    def vectors(n: int, nnz: int) -> list[tuple[np.ndarray, np.ndarray]]:  # nnz: the most terms a vector has
        sizes = rng.integers(max(1, nnz // 5), nnz + 1, n)
        return [
            (t, (rng.integers(1, 4, t.size) if integer else rng.pareto(1.5, t.size) + 0.05).astype(np.float32))
            for t in (rng.choice(vocab, size=size, replace=False, p=p / p.sum()) for size in sizes)
        ]

    index = ImpactIndex()
    start = 0
    for n in (800, 300, 120, 50):  # each add under half the last: four segments that do not merge
        index.add(np.arange(start, start + n), vectors(n, 25))
        start += n
    assert len(index._segments) == 4
    queries = vectors(40, 12)
    for removed in (False, True):
        if removed:
            index.remove(rng.choice(start, size=200, replace=False))  # dead slots, not compacted
        for k in (1, 10, 50):
            for allowed in (None, rng.choice(start, size=600, replace=False)):
                pruned = index.search(queries, k, allowed=allowed, idf=idf, prune=True, length_norm=length_norm)
                plain = index.search(queries, k, allowed=allowed, idf=idf, prune=False, length_norm=length_norm)
                for a, b in zip(pruned, plain):
                    assert [i for i, _ in a] == [i for i, _ in b]
                    assert [s for _, s in a] == [s for _, s in b]  # the same additions in the same order


def test_impact_length_normalisation_divides_by_chunk_length_over_the_live_mean() -> None:
    from lodestar.retrieve.impact import ImpactIndex

    index = ImpactIndex()  # one term in chunk 1, three in chunk 2, five in chunk 3: mean 3 live terms
    index.add(
        np.array([1, 2, 3]),
        [
            (np.array([7]), np.array([1.0])),
            (np.array([7, 8, 9]), np.array([1.0, 1.0, 1.0])),
            (np.arange(5, 10), np.full(5, 2.0)),
        ],
    )
    q = [(np.array([7]), np.array([1.0]))]
    assert index.search(q, 3) == index.search(q, 3, length_norm=0.0) == [[(3, 2.0), (1, 1.0), (2, 1.0)]]
    for b in (0.5, 1.0):
        got = dict(index.search(q, 3, length_norm=b)[0])
        assert got == pytest.approx({1: 1.0 / (1 - b + b / 3), 2: 1.0, 3: 2.0 / (1 - b + b * 5 / 3)})
    assert [i for i, _ in index.search(q, 3, length_norm=1.0)[0]] == [1, 3, 2]  # the short chunk first now
    index.remove(np.array([3]))  # the mean is over live chunks: 2 terms now
    assert dict(index.search(q, 3, length_norm=1.0)[0]) == pytest.approx({1: 2.0, 2: 2.0 / 3})
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInput, match="length_norm=.* is out of range: use 0..1"):
            index.search(q, 3, length_norm=bad)


def test_feedback_query_is_the_unit_query_plus_the_mean_unit_chunk_cut_to_its_largest_terms() -> None:
    """Rocchio feedback against a dense reference: q/|q| + weight * top-`terms` of mean(c/|c|)."""
    rng = np.random.default_rng(0)
    vocab = 50
    q = (np.array([3, 7, 11]), np.array([1.0, 2.0, 2.0], dtype=np.float32))
    chunks = []
    for _ in range(3):
        t = np.sort(rng.choice(vocab, 12, replace=False))
        chunks.append((t, rng.uniform(0.1, 2.0, t.size).astype(np.float32)))
    chunks.append((np.empty(0, np.int64), np.empty(0, np.float32)))  # a chunk with no weights counts for nothing

    def dense(t: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = np.zeros(vocab)
        out[t] = w
        return out

    mean = np.mean([dense(t, w) / np.linalg.norm(w) for t, w in chunks[:3]], axis=0)
    cut = np.where(mean >= np.sort(mean)[-5], mean, 0.0)  # its 5 largest (no ties in random weights)
    want = dense(*q) / np.linalg.norm(q[1]) + 0.5 * cut
    t, w = feedback_query(q, chunks, 0.5, terms=5)
    assert np.all(np.diff(t) > 0) and w.dtype == np.float32
    np.testing.assert_allclose(dense(t, w), want, rtol=1e-6)
    assert set(q[0]) <= set(t.tolist()) and t.size <= 3 + 5
    same_t, same_w = feedback_query(q, [chunks[3]], 1.0)  # nothing to add: the query as it was
    assert same_t.tolist() == [3, 7, 11] and same_w.tolist() == [1.0, 2.0, 2.0]
