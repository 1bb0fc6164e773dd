"""Shard fan-out: a sharded dense index answers exactly as one index holding the same vectors
(filters, deletes, snapshots, IVF training per shard), a bad add changes no shard, and a sharded
collection works through the engine, survives reopening and refuses a bad shard count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.dense import DenseIndex
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.shards import ShardedDenseIndex, dense_from_bytes, merge_topk, new_dense
from lodestar.retrieve.types import CollectionConfig, Document, Filter, SearchRequest

DIM = 16


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=np.int64) * 3 + 1, rng.standard_normal((n, DIM)).astype(np.float32)


def test_merge_topk_keeps_the_best_and_pads_last() -> None:
    scores = np.array([[0.9, -np.inf, 0.5, 0.7]], dtype=np.float32)
    ids = np.array([[4, -1, 2, 9]])
    s, i = merge_topk(scores, ids, 3)
    assert i.tolist() == [[4, 9, 2]] and s[0, 0] == pytest.approx(0.9)
    s, i = merge_topk(scores, ids, 4)
    assert i[0, -1] == -1 and s[0, -1] == -np.inf


@pytest.mark.parametrize("metric,parallel", [("cosine", True), ("l2", True), ("cosine", False)])
def test_sharded_flat_equals_one_index(metric: str, parallel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import lodestar.retrieve.shards as shards

    if parallel:  # small test indexes are searched one shard after another unless told otherwise
        monkeypatch.setattr(shards, "PARALLEL_MIN", 0)
    ids, x = data(300)
    one, many = DenseIndex(DIM, "Flat", metric), ShardedDenseIndex(DIM, "Flat", metric, shards=4)
    one.add(ids, x)
    many.add(ids, x)
    assert many.count == 300 and all(s.count == 75 for s in many.shards)  # id % 4 spreads evenly
    assert np.array_equal(many.ids(), one.ids())
    q = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    for allowed in (None, ids[::7]):
        s1, i1 = one.search(q, 10, allowed)
        s2, i2 = many.search(q, 10, allowed)
        assert np.array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=1e-5)
    assert many.remove(np.concatenate([ids[:50], [999_999]])) == 50
    one.remove(ids[:50])
    assert np.array_equal(many.search(q, 10)[1], one.search(q, 10)[1])
    s, i = many.search(q, 400)  # more than there are: padded with -1 at the end
    assert (i[:, 250:] == -1).all() and np.isneginf(s[:, 250:]).all()


def test_sharded_add_is_all_or_nothing() -> None:
    ids, x = data(40)
    many = ShardedDenseIndex(DIM, "Flat", "cosine", shards=3)
    many.add(ids[:20], x[:20])
    before = many.ids()
    with pytest.raises(InvalidInput, match="already in the index"):
        many.add(ids[15:30], x[15:30])  # ids 15..19 are present in their shards; the rest are new
    bad = x[20:30].copy()
    bad[-1, 0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        many.add(ids[20:30], bad)
    with pytest.raises(InvalidInput, match="shape"):
        many.add(ids[20:30], x[20:29])
    assert np.array_equal(many.ids(), before)  # no shard took its part of a refused add
    with pytest.raises(InvalidInput, match="k must be a positive integer"):
        many.search(x[:1], 0)


def test_sharded_ivf_trains_per_shard_and_snapshots() -> None:
    ids, x = data(700)
    many = ShardedDenseIndex(DIM, "IVF4,Flat", "cosine", shards=2, train_size=256)
    many.add(ids[:400], x[:400])  # 200 per shard: still exact
    assert not many.trained and "trains at 256 vectors per shard (2 shards); 400 so far" in many.note
    many.add(ids[400:], x[400:])
    assert many.trained and many.note == ""
    back = dense_from_bytes(many.to_bytes())
    assert isinstance(back, ShardedDenseIndex) and back.n == 2 and back.count == 700 and back.trained
    q = x[:3]
    assert np.array_equal(back.search(q, 5)[1], many.search(q, 5)[1])
    plain = new_dense(DIM, "Flat", "cosine", 1)
    assert isinstance(plain, DenseIndex) and isinstance(dense_from_bytes(plain.to_bytes()), DenseIndex)
    with pytest.raises(ValueError, match="truncated"):
        ShardedDenseIndex.from_bytes(many.to_bytes()[:-1])
    with pytest.raises(InvalidInput, match=r"shards=0 is out of range: use 1\.\.64"):
        new_dense(DIM, "Flat", "cosine", 0)


DOCS = [Document(f"d{i}", f"document number {i} about topic {i % 5}", {"group": i % 3}) for i in range(24)]


def test_sharded_collection_matches_unsharded(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "collections"
    engine = RetrievalEngine(root, tiny_engine)
    engine.create(CollectionConfig(name="one", chunk_tokens=0))
    engine.create(CollectionConfig(name="many", chunk_tokens=0, shards=3))
    for name in ("one", "many"):
        engine.upsert(name, DOCS)
        engine.delete(name, ["d4", "d5"])

    def ids(name: str, eng: RetrievalEngine, **kw) -> list[list[str]]:  # type: ignore[no-untyped-def]
        got = eng.search(name, SearchRequest(["topic 3", "number 7"], k=5, **kw))
        return [[h.id for h in hits] for hits in got]

    filt = {"filters": (Filter("group", "eq", 1),)}
    assert ids("many", engine) == ids("one", engine)
    assert ids("many", engine, **filt) == ids("one", engine, **filt)
    assert ids("many", engine, retriever="hybrid") == ids("one", engine, retriever="hybrid")
    stats = engine.stats("many")
    assert stats.index_vectors == 22 and stats.documents == 22
    expected = ids("many", engine)
    engine.snapshot("many")
    engine.close()

    again = RetrievalEngine(root, tiny_engine)  # from the sharded snapshot
    assert again.config("many").shards == 3 and again.config("one").shards == 1
    assert ids("many", again) == expected
    again.rebuild("many")  # from the store, into three shards again
    assert ids("many", again) == expected
    with pytest.raises(InvalidInput, match=r"shards=65 is out of range: use 1\.\.64"):
        again.create(CollectionConfig(name="bad", shards=65))
    again.close()


def test_shards_on_the_wire() -> None:
    from lodestar.retrieve.v1 import retrieve_pb2 as rpb
    from lodestar.services.retrieve import config_from_pb as collection_config
    from lodestar.services.retrieve import config_to_pb as collection_config_pb

    assert collection_config(rpb.CollectionConfig(name="a")).shards == 1  # unset = one index
    four = collection_config(rpb.CollectionConfig(name="a", shards=4))
    assert four.shards == 4 and collection_config(collection_config_pb(four)).shards == 4
