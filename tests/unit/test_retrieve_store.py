"""The SQLite document store: durable settings, one transaction per write, the change log that
replay uses, vectors kept exactly, and metadata filters compiled to SQL with JSON types respected."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lodestar.errors import InvalidInput, Overloaded
from lodestar.retrieve.filters import compile_filters
from lodestar.retrieve.store import DB_NAME, DocWrite, Store, StoreError
from lodestar.retrieve.types import Document, Filter

D = 4


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)  # (n, D)


def doc(doc_id: str, text: str = "hello world", chunks: int = 1, meta: str = "{}", seed: int = 0) -> DocWrite:
    spans = [(0, len(text))] * chunks
    return DocWrite(id=doc_id, text=text, metadata_json=meta, spans=spans, vectors=vecs(chunks, seed))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    Store.initialise(tmp_path, {"name": "c"}, {"dim": str(D)})
    s = Store(tmp_path)
    yield s
    s.close()


def test_initialise_settings_and_meta(store: Store, tmp_path: Path) -> None:
    conn = store._reader()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.config == {"name": "c"}
    assert store.meta["dim"] == str(D) and len(store.meta["store_id"]) == 32
    assert store.last_seq() == 0 and store.counts() == (0, 0)
    with pytest.raises(FileExistsError):
        Store.initialise(tmp_path, {}, {})


def test_open_refuses_missing_or_foreign_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path)
    Store.initialise(tmp_path, {}, {})
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema_version '99'"):
        Store(tmp_path)


def test_write_replace_delete_and_change_log(store: Store) -> None:
    r1 = store.write_docs([doc("a", chunks=2), doc("b")])
    assert r1.count == 2 and r1.added.tolist() == [1, 2, 3] and r1.removed.tolist() == [] and r1.seq == 2
    r2 = store.write_docs([doc("a", "new text", chunks=1, meta='{"x": 1}')])
    assert r2.removed.tolist() == [1, 2] and r2.added.tolist() == [4] and r2.seq == 3
    got = store.get_docs(["a", "zzz", "b"])
    assert got[0] == Document("a", "new text", {"x": 1}) and got[1] is None and got[2].text == "hello world"
    assert store.counts() == (2, 2)
    r3 = store.delete_docs(["b", "nope", "b"])
    assert r3.count == 1 and r3.removed.tolist() == [3] and r3.seq == 4
    assert store.counts() == (1, 1)  # chunks went with the document (ON DELETE CASCADE)
    r4 = store.delete_docs(["nope"])
    assert r4.count == 0 and r4.seq == 4  # nothing deleted, nothing logged
    assert store.touched_since(0).tolist() == [1, 2, 3, 4]
    assert store.touched_since(3).tolist() == [3]
    # ids are never reused, even after the highest one is deleted
    store.delete_docs(["a"])
    assert store.write_docs([doc("c")]).added.tolist() == [5]


def test_failed_batch_rolls_back_everything(store: Store) -> None:
    store.write_docs([doc("keep")])
    bad = DocWrite(id="y", text="t", metadata_json="{}", spans=[(0, 1)] * 3, vectors=vecs(1))  # 3 spans, 1 vector
    with pytest.raises(IndexError):
        store.write_docs([doc("x"), bad])
    assert store.get_docs(["x", "y"]) == [None, None]
    assert store.counts() == (1, 1) and store.last_seq() == 1
    with pytest.raises(sqlite3.IntegrityError):  # metadata must be JSON (the CHECK constraint)
        store.write_docs([doc("z", meta="not json")])
    assert store.counts() == (1, 1)


def test_full_disk_is_a_clear_refusal_and_the_store_keeps_working(store: Store) -> None:
    store.write_docs([doc("a")])
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLite answers SQLITE_FULL, as on a full disk
    big = [doc(f"big{i}", "x" * 20000) for i in range(5)]
    with pytest.raises(Overloaded, match="out of disk space .*nothing of this write was stored; free disk space"):
        store.write_docs(big)  # not "cannot rollback - no transaction is active" (INTERNAL)
    assert not store._writer.in_transaction
    assert store.counts() == (1, 1) and store.last_seq() == 1
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    assert store.write_docs([doc("b")]).seq == 2  # the same connection writes again once space is back
    assert store.get_docs(["a", "b"])[1] is not None


def test_vectors_and_texts_round_trip_exactly(store: Store) -> None:
    text = "0123456789abcdef"
    w = DocWrite(id="a", text=text, metadata_json="{}", spans=[(0, 8), (6, 16)], vectors=vecs(2, seed=3))
    store.write_docs([w, doc("b", seed=4)])
    ids, vectors, texts = store.chunks_payload(np.array([2, 1, 99], dtype=np.int64), D)
    assert ids.tolist() == [1, 2] and texts == ["01234567", "6789abcdef"]
    np.testing.assert_array_equal(vectors, w.vectors)
    batches = list(store.iter_chunks(D, batch=2))
    assert [b[0].tolist() for b in batches] == [[1, 2], [3]]
    np.testing.assert_array_equal(batches[1][1], vecs(1, seed=4))
    refs = store.chunk_refs([2, 3, 42])
    assert refs[2].doc_id == "a" and (refs[2].idx, refs[2].start, refs[2].end) == (1, 6, 16) and 42 not in refs


def test_prune_keeps_seq_monotonic(store: Store) -> None:
    for i in range(5):
        store.write_docs([doc(f"d{i}")])
    store.prune_changes(4)
    assert store.pruned_through() == 4 and store.last_seq() == 5
    assert store.touched_since(0).tolist() == [5]
    store.prune_changes(5)
    assert store.last_seq() == 5  # survives an empty log
    assert store.write_docs([doc("x")]).seq == 6
    store.prune_changes(2)  # never moves back
    assert store.pruned_through() == 5


def test_durable_across_reopen(tmp_path: Path) -> None:
    Store.initialise(tmp_path, {}, {"dim": str(D)})
    s = Store(tmp_path)
    s.write_docs([doc("a", "persisted")])
    s.close()
    s = Store(tmp_path)
    assert s.get_docs(["a"])[0].text == "persisted" and s.last_seq() == 1
    assert s.disk_bytes() > 0
    s.close()


META: dict[str, Any] = {
    "s": {"lang": "en", "year": 2021, "score": 0.5, "ok": True, "tag": None},
    "t": {"lang": "de", "year": 2019, "score": 1, "ok": False, "date": "2024-01-05"},
    "u": {"lang": "en", "year": "2022", "one": 1, "date": "2023-12-31", "a.b": "dotted"},
    "v": {"ok": 1, "nested": {"x": 1}},
}


@pytest.fixture
def meta_store(store: Store) -> Store:
    import json

    store.write_docs([doc(k, meta=json.dumps(m)) for k, m in META.items()])
    return store


def matching(store: Store, *filters: Filter) -> list[str]:
    compiled = compile_filters(list(filters))
    assert compiled is not None
    ids = store.allowed_chunk_ids(compiled)
    refs = store.chunk_refs(ids.tolist())
    return sorted(r.doc_id for r in refs.values())


@pytest.mark.parametrize(
    ("f", "want"),
    [
        (Filter("lang", "eq", "en"), ["s", "u"]),
        (Filter("lang", "ne", "en"), ["t", "v"]),  # ne matches documents without the field
        (Filter("year", "eq", 2021), ["s"]),
        (Filter("year", "eq", "2022"), ["u"]),  # a string is not a number
        (Filter("score", "eq", 1.0), ["t"]),  # 1 == 1.0
        (Filter("ok", "eq", True), ["s"]),  # true is not 1
        (Filter("ok", "eq", 1), ["v"]),
        (Filter("tag", "eq", None), ["t", "u", "v", "s"]),  # null or missing
        (Filter("tag", "ne", None), []),
        (Filter("lang", "in", ["de", "fr"]), ["t"]),
        (Filter("year", "in", [2019, "2022", True]), ["t", "u"]),
        (Filter("ok", "in", [False, None]), ["t", "u"]),
        (Filter("lang", "nin", ["en"]), ["t", "v"]),
        (Filter("lang", "in", []), []),
        (Filter("year", "gt", 2019), ["s"]),  # numbers compare with numbers only
        (Filter("year", "gte", 2019), ["s", "t"]),
        (Filter("year", "lt", 2021), ["t"]),
        (Filter("year", "lte", 2021.0), ["s", "t"]),
        (Filter("date", "gte", "2024-01-01"), ["t"]),  # ISO dates as strings
        (Filter("date", "lt", "2024"), ["u"]),
        (Filter("a.b", "eq", "dotted"), ["u"]),  # a dot is part of the key, not a path
        (Filter("nested", "eq", 1), []),
    ],
)
def test_filters(meta_store: Store, f: Filter, want: list[str]) -> None:
    assert matching(meta_store, f) == sorted(want)


def test_filters_are_anded(meta_store: Store) -> None:
    assert matching(meta_store, Filter("lang", "eq", "en"), Filter("year", "gte", 2000)) == ["s"]
    assert compile_filters([]) is None


@pytest.mark.parametrize(
    ("f", "message"),
    [
        (Filter("", "eq", 1), "filter 1: field is empty"),
        (Filter('a"b', "eq", 1), "double quote"),
        (Filter("x", "like", 1), "unknown op 'like': valid ops are eq, ne, in, nin, gt, gte, lt, lte"),
        (Filter("x", "in", "abc"), "op 'in' needs a list of values, got str"),
        (Filter("x", "nin", [[1]]), "value of type list is not allowed"),
        (Filter("x", "gt", True), "op 'gt' needs a number or a string, got bool"),
        (Filter("x", "lte", None), "needs a number or a string, got NoneType"),
        (Filter("x", "eq", [1, 2]), "use 'in'/'nin' for a list"),
        (Filter("x", "eq", float("nan")), "not a finite number"),
        (Filter("x", "eq", 2**70), "outside the 64-bit range"),
        (Filter("x", "in", list(range(2000))), "the limit is 1024"),
    ],
)
def test_bad_filters_are_named(f: Filter, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        compile_filters([Filter("ok", "eq", 1), f])
    assert message in str(e.value) and "filter 1" in str(e.value)


def test_reads_from_many_threads_while_writing(store: Store) -> None:
    store.write_docs([doc(f"d{i}") for i in range(20)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                docs, chunks = store.counts()
                assert docs == chunks and docs >= 20
                assert store.get_docs(["d0"])[0] is not None
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(30):
        store.write_docs([doc(f"n{i}")])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(store._readers) == 4
