"""The per-service conversions at the gRPC edge: bad input is InvalidInput (INVALID_ARGUMENT) rather
than an unexpected error (INTERNAL); unset fields take the engine's defaults; the enums and the
deprecated string fields of the first release both work; the client's requests read back as sent."""

from __future__ import annotations

import json

import pytest

from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.errors import InvalidInput
from lodestar.generate.answer import AnswerRequest
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.retrieve import types as rt
from lodestar.retrieve.prepare import MAX_METADATA_DEPTH, DocLimits, json_depth, validate_document
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services import compress, embed, generate, retrieve
from lodestar.services.client import compress as client_compress
from lodestar.services.client import embed as client_embed
from lodestar.services.client import generate as client_generate
from lodestar.services.client import retrieve as client_retrieve
from lodestar.services.wire import enum_names


def test_json_depth() -> None:
    assert [json_depth(v) for v in (1, "s", {}, {"a": 1}, {"a": [1]}, [[], [[{}]]])] == [0, 0, 1, 1, 2, 4]
    assert json_depth(json.loads("[" * 500 + "]" * 500)) == MAX_METADATA_DEPTH + 1  # stops past the limit


def test_deeply_nested_json_is_invalid_input() -> None:
    """json.loads raises RecursionError (not JSONDecodeError) past ~1000 levels: it used to reach the
    client as INTERNAL from Upsert, Search and Answer filters."""
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(InvalidInput, match=r"document 0 \('d'\) metadata is nested too deeply: the limit is 64 levels"):
        retrieve.documents_from_pb([rpb.Document(id="d", text="t", metadata_json='{"a": ' + deep + "}")])
    with pytest.raises(InvalidInput, match="value_json is nested too deeply: give a scalar, or a list of scalars"):
        retrieve.search_from_pb(
            rpb.SearchRequest(queries=["q"], filters=[rpb.Filter(field="f", op="in", value_json=deep)])
        )
    ok = '{"a": ' + "[" * (MAX_METADATA_DEPTH - 1) + "]" * (MAX_METADATA_DEPTH - 1) + "}"
    doc = retrieve.documents_from_pb([rpb.Document(id="d", text="t", metadata_json=ok)])[0]
    assert json_depth(doc.metadata) == MAX_METADATA_DEPTH
    validate_document(doc, DocLimits(), "document 0")  # the limit itself is allowed


def test_search_defaults_live_in_the_engine_dataclass() -> None:
    assert retrieve.search_from_pb(rpb.SearchRequest(queries=["q"])) == rt.SearchRequest(queries=["q"])
    assert retrieve.search_from_pb(rpb.SearchRequest(queries=["q"], options=rpb.SearchOptions())) == rt.SearchRequest(
        queries=["q"]
    )


def test_search_options_and_their_first_release_spelling_agree() -> None:
    old = rpb.SearchRequest(
        queries=["q"],
        k=3,
        retriever="hybrid",
        fusion="weighted",
        alpha=0.25,
        rrf_k=7,
        filters=[rpb.Filter(field="year", op="gte", value_json="2000")],
        include_text=False,
        feedback_chunks=3,
        feedback_weight=0.5,
        length_norm=0.25,
    )
    new = rpb.SearchRequest(
        queries=["q"],
        options=rpb.SearchOptions(
            k=3,
            retriever=rpb.RETRIEVER_HYBRID,
            fusion=rpb.FUSION_WEIGHTED,
            alpha=0.25,
            rrf_k=7,
            filters=[rpb.Filter(field="year", operator=rpb.FILTER_OP_GTE, value_json="2000")],
            include_text=False,
            feedback_chunks=3,
            feedback_weight=0.5,
            length_norm=0.25,
        ),
    )
    expected = rt.SearchRequest(
        queries=["q"],
        k=3,
        retriever="hybrid",
        fusion="weighted",
        alpha=0.25,
        rrf_k=7,
        filters=(rt.Filter("year", "gte", 2000),),
        include_text=False,
        feedback_chunks=3,
        feedback_weight=0.5,
        length_norm=0.25,
    )
    assert retrieve.search_from_pb(old) == retrieve.search_from_pb(new) == expected
    # with options set, the deprecated fields are not read
    both = rpb.SearchRequest(queries=["q"], k=99, retriever="dense", options=rpb.SearchOptions(k=3))
    assert (retrieve.search_from_pb(both).k, retrieve.search_from_pb(both).retriever) == (3, "dense")


def test_unknown_enum_numbers_are_invalid_input_naming_the_valid_ones() -> None:
    with pytest.raises(InvalidInput, match=r"retriever: unknown value 9; valid are RETRIEVER_DENSE \(1\)"):
        retrieve.search_from_pb(rpb.SearchRequest(queries=["q"], options=rpb.SearchOptions(retriever=9)))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="truncate: unknown value 7"):
        embed.options_from_pb(pb.EmbedRequest(texts=["a"], truncate=7))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="dtype: unknown value 42"):
        embed.options_from_pb(pb.EmbedRequest(texts=["a"], dtype=42))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="operator: unknown value 99"):
        retrieve.filters_from_pb([rpb.Filter(field="f", operator=99, value_json="1")])  # type: ignore[arg-type]


def test_collection_config_enums_and_strings() -> None:
    old = retrieve.config_from_pb(rpb.CollectionConfig(name="c", sparse="learned", metric="ip"))
    new = retrieve.config_from_pb(
        rpb.CollectionConfig(name="c", sparse_kind=rpb.SPARSE_KIND_LEARNED, metric_kind=rpb.METRIC_IP)
    )
    assert old == new == rt.CollectionConfig(name="c", sparse="learned", metric="ip")
    assert retrieve.config_from_pb(rpb.CollectionConfig(name="c")) == rt.CollectionConfig(name="c")
    back = retrieve.config_to_pb(new)
    assert (back.sparse, back.sparse_kind, back.metric, back.metric_kind) == (
        "learned",
        rpb.SPARSE_KIND_LEARNED,
        "ip",
        rpb.METRIC_IP,
    )
    assert client_retrieve.config_from_pb(back) == new


def test_answer_options_defaults_and_both_spellings() -> None:
    unset = generate.answer_from_pb(gpb.AnswerRequest(question="q", collection="c"))
    assert unset == AnswerRequest(question="q", collection="c")
    old = generate.answer_from_pb(
        gpb.AnswerRequest(
            question="q",
            collection="c",
            k=3,
            retriever="sparse",
            compression="none",
            feedback_chunks=3,
            feedback_weight=0.5,
            length_norm=0.25,
        )
    )
    new = generate.answer_from_pb(
        gpb.AnswerRequest(
            question="q",
            collection="c",
            compressor=gpb.COMPRESSION_NONE,
            search=rpb.SearchOptions(
                k=3, retriever=rpb.RETRIEVER_SPARSE, feedback_chunks=3, feedback_weight=0.5, length_norm=0.25
            ),
        )
    )
    assert old == new
    assert (new.k, new.retriever, new.compression, new.feedback_chunks, new.feedback_weight, new.length_norm) == (
        3,
        "sparse",
        "none",
        3,
        0.5,
        0.25,
    )
    assert new.params.max_new_tokens == 64  # Answer's own default, not Generate's 128


def test_compress_kwargs_both_spellings() -> None:
    old = compress.compress_kwargs(cpb.CompressRequest(query="q", passages=["p"], method="abstractive", order="score"))
    new = compress.compress_kwargs(
        cpb.CompressRequest(
            query="q", passages=["p"], compressor=cpb.METHOD_ABSTRACTIVE, sentence_order=cpb.ORDER_SCORE
        )
    )
    assert old == new and (new["method"], new["order"]) == ("abstractive", "score")
    assert "method" not in compress.compress_kwargs(cpb.CompressRequest(query="q"))  # unset: the engine's default


@pytest.mark.parametrize(
    "enum, names",
    [
        (rpb.Retriever, ["dense", "sparse", "hybrid"]),
        (rpb.Fusion, ["rrf", "weighted", "auto", "dbsf"]),
        (rpb.SparseKind, ["none", "bm25", "learned"]),
        (rpb.DenseKind, ["model", "none"]),
        (rpb.FilterOp, ["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte"]),
        (cpb.Method, ["extractive", "abstractive"]),
        (cpb.Order, ["original", "score"]),
    ],
)
def test_enums_spell_the_engines_names(enum, names) -> None:  # type: ignore[no-untyped-def]
    from lodestar.compress_ctx.types import METHODS, ORDERS

    assert enum_names(enum) == names
    engine = {
        "Retriever": rt.RETRIEVERS,
        "Fusion": rt.FUSIONS,
        "SparseKind": rt.SPARSE_KINDS,
        "DenseKind": rt.DENSE_KINDS,
        "Method": METHODS,
        "Order": ORDERS,
    }
    if enum.DESCRIPTOR.name in engine:
        assert tuple(names) == tuple(engine[enum.DESCRIPTOR.name])


def test_client_requests_read_back_as_sent() -> None:
    """The client's converters are the mirror of the server's: what one writes, the other reads."""
    opts = client_retrieve.search_options(
        k=4,
        retriever="hybrid",
        fusion="weighted",
        alpha=0.25,
        filters=[("lang", "in", ["en", "fr"]), {"field": "y", "op": "lt", "value": 3}],
    )
    got = retrieve.search_from_pb(rpb.SearchRequest(queries=["q"], options=opts))
    assert got == rt.SearchRequest(
        queries=["q"],
        k=4,
        retriever="hybrid",
        fusion="weighted",
        alpha=0.25,
        filters=(rt.Filter("lang", "in", ["en", "fr"]), rt.Filter("y", "lt", 3)),
    )
    with pytest.raises(ValueError, match="unknown retriever 'hybird': valid are dense, sparse, hybrid"):
        client_retrieve.search_options(retriever="hybird")
    req = client_compress.request("q", ["p"], method="abstractive", order="score", budget_tokens=5)
    assert compress.compress_kwargs(req)["method"] == "abstractive" and req.budget_tokens == 5
    a = client_generate.answer_request(
        "q", "c", opts, compression="none", budget_tokens=None, selective=True, threshold=None, max_new_tokens=9
    )
    got_a = generate.answer_from_pb(a)
    assert (got_a.compression, got_a.k, got_a.selective, got_a.params.max_new_tokens) == ("none", 4, True, 9)
    e = client_embed.request(["x"], client_embed.EmbedOptions(dtype="int8", truncate=False, mode="echo"))
    back = embed.options_from_pb(e)
    assert (back.dtype, back.truncate, back.mode) == ("int8", False, "echo")


def test_a_string_is_one_text_and_long_inputs_are_split() -> None:
    assert client_embed.as_texts("hello") == ["hello"]
    reqs = client_embed.requests([str(i) for i in range(10)], client_embed.EmbedOptions(), 4)
    assert [len(r.texts) for r in reqs] == [4, 4, 2]
