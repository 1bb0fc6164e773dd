"""Request conversion refuses what the engines could not parse or store, with INVALID_ARGUMENT's
InvalidInput instead of an unexpected error (INTERNAL)."""

from __future__ import annotations

import json

import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.prepare import MAX_METADATA_DEPTH, DocLimits, json_depth, validate_document
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services import convert


def test_json_depth() -> None:
    assert [json_depth(v) for v in (1, "s", {}, {"a": 1}, {"a": [1]}, [[], [[{}]]])] == [0, 0, 1, 1, 2, 4]
    assert json_depth(json.loads("[" * 500 + "]" * 500)) == MAX_METADATA_DEPTH + 1  # stops past the limit


def test_deeply_nested_json_is_invalid_input() -> None:
    """json.loads raises RecursionError (not JSONDecodeError) past ~1000 levels: it used to reach the
    client as INTERNAL from Upsert, Search and Answer filters."""
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(InvalidInput, match=r"document 0 \('d'\) metadata is nested too deeply: the limit is 64 levels"):
        convert.documents([rpb.Document(id="d", text="t", metadata_json='{"a": ' + deep + "}")])
    with pytest.raises(InvalidInput, match="value_json is nested too deeply: give a scalar, or a list of scalars"):
        convert.search_request(rpb.SearchRequest(queries=["q"], filters=[rpb.Filter(field="f", op="in", value_json=deep)]))
    ok = '{"a": ' + "[" * (MAX_METADATA_DEPTH - 1) + "]" * (MAX_METADATA_DEPTH - 1) + "}"
    doc = convert.documents([rpb.Document(id="d", text="t", metadata_json=ok)])[0]
    assert json_depth(doc.metadata) == MAX_METADATA_DEPTH
    validate_document(doc, DocLimits(), "document 0")  # the limit itself is allowed


def test_search_feedback_fields() -> None:
    unset = convert.search_request(rpb.SearchRequest(queries=["q"]))
    assert (unset.feedback_chunks, unset.feedback_weight, unset.length_norm) == (0, 1.0, 0.0)
    given = convert.search_request(rpb.SearchRequest(queries=["q"], feedback_chunks=3, feedback_weight=0.5, length_norm=0.25))
    assert (given.feedback_chunks, given.feedback_weight, given.length_norm) == (3, 0.5, 0.25)



def test_answer_feedback_fields() -> None:
    from lodestar.generate.v1 import generate_pb2 as gpb

    unset = convert.answer_request(gpb.AnswerRequest(question="q", collection="c"))
    assert (unset.feedback_chunks, unset.feedback_weight, unset.length_norm) == (0, 1.0, 0.0)
    given = convert.answer_request(gpb.AnswerRequest(question="q", collection="c", feedback_chunks=3, feedback_weight=0.5,
                                                     length_norm=0.25))
    assert (given.feedback_chunks, given.feedback_weight, given.length_norm) == (3, 0.5, 0.25)
