"""The Milvus backend's pure parts: typed metadata, escaped literals, filter expressions, and how
Milvus's errors become Lodestar's (so the client sees UNAVAILABLE, RESOURCE_EXHAUSTED, NOT_FOUND or
INVALID_ARGUMENT, never INTERNAL). Their effect on a real Milvus is tested in test_retrieve_backends.py."""

from __future__ import annotations

import pytest
from pymilvus.exceptions import CollectionNotExistException, ConnectError, MilvusException

from lodestar.errors import InvalidInput, NotFound, Overloaded, Unavailable
from lodestar.retrieve.backends.milvus_filters import id_list, milvus_expression, string_literal, typed
from lodestar.retrieve.backends.milvus_schema import dense_index
from lodestar.retrieve.backends.milvus_store import mapped, milvus_errors
from lodestar.retrieve.types import Filter


def test_values_are_typed_so_types_never_compare_equal() -> None:
    assert [typed(v) for v in (True, False, 1, 1.5, None, "x", [1], {"a": 1})] == [
        "b:1",
        "b:0",
        1,
        1.5,
        "n:",
        "s:x",
        "j:[1]",
        'j:{"a":1}',
    ]


def test_string_literals_escape_everything_that_could_end_them() -> None:
    assert string_literal('a"b') == '"a\\"b"'
    assert string_literal("a\\") == '"a\\\\"'
    assert string_literal("x\ny\tz\x01") == '"x\\ny\\tz\\u0001"'
    assert id_list(['a"', "b"]) == '["a\\"", "b"]'


def test_expressions_for_every_operator() -> None:
    assert milvus_expression([]) == ""
    assert milvus_expression([Filter("k", "eq", "v")]) == '(meta["k"] == "s:v")'
    assert milvus_expression([Filter("n", "gte", 2)]) == '(meta["n"] >= 2)'
    assert (
        milvus_expression([Filter("k", "lt", "m")]) == '(meta["k"] < "s:m" and meta["k"] >= "s:" and meta["k"] < "s;")'
    )
    assert milvus_expression([Filter("k", "ne", 1)]) == '(not exists meta["k"] or not (meta["k"] == 1))'
    assert milvus_expression([Filter("k", "ne", None)]) == '(not (not exists meta["k"] or meta["k"] == "n:"))'
    assert milvus_expression([Filter("k", "in", [])]) == "(chunk < 0)"
    both = milvus_expression([Filter("a", "eq", True), Filter("b", "in", [1, "x"])])
    assert both == '(meta["a"] == "b:1") and ((meta["b"] == 1) or (meta["b"] == "s:x"))'
    with pytest.raises(InvalidInput, match="unknown op 'like'"):
        milvus_expression([Filter("k", "like", "x")])


def test_index_strings_map_or_are_refused_naming_the_valid_ones() -> None:
    assert dense_index("Flat").index_type == "FLAT"
    assert dense_index("HNSW16").params == {"M": 16, "efConstruction": 40}
    assert dense_index("IVF64,Flat").search_params("ip", 10) == {"metric_type": "IP", "params": {"nprobe": 16}}
    assert dense_index("IVF64,PQ8").params == {"nlist": 64, "m": 8, "nbits": 8}
    with pytest.raises(InvalidInput, match="use one of Flat, HNSW"):
        dense_index("OPQ16,IVF64,PQ16")


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (ConnectError(message="Fail connecting to server on 10.0.0.1:19530"), Unavailable, "unreachable"),
        (
            MilvusException(code=8, message="request is rejected by grpc RateLimiter middleware"),
            Overloaded,
            "over capacity",
        ),
        (MilvusException(code=53, message="memory quota exceeded"), Overloaded, "memory quota"),
        (CollectionNotExistException(message="collection not found[lodestar_x]"), NotFound, "no such collection"),
        (MilvusException(code=1100, message="invalid parameter: topk 20000 > 16384"), InvalidInput, "topk 20000"),
    ],
)
def test_milvus_errors_become_lodestar_errors(exc: Exception, kind: type, words: str) -> None:
    err = mapped(exc, "searching collection 'c'")
    assert isinstance(err, kind) and words in str(err)
    with pytest.raises(kind), milvus_errors("x"):
        raise exc


def test_a_bug_of_ours_is_not_disguised_as_a_milvus_error() -> None:
    with pytest.raises(KeyError), milvus_errors("x"):
        raise KeyError("doc_id")
