"""GenerateService over real gRPC: streaming, lossless speculative greedy on the bundled model,
datastores by name, stop strings, seeded sampling, cancellation, capacity, Answer, bad input."""

from __future__ import annotations

import dataclasses
import time

import pytest

from lodestar.backbone import Backbone
from lodestar.services.client import AnswerContext, ChannelConfig, Chunk, Client, ClientError
from lodestar.services.server import BackgroundServer

pytestmark = pytest.mark.slow
NO_RETRIES = ChannelConfig(retries=0)  # the refusals themselves are what these tests look at

PASSAGE = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their "
    "leader Rollo, agreed to swear fealty to King Charles III of West Francia."
)
COPY_PROMPT = f"Repeat the following text exactly.\n\n{PASSAGE}"


def test_stream_and_lossless_speculative_greedy(client: Client) -> None:
    chunks = list(client.generate_stream(COPY_PROMPT, chat=True, passages=[PASSAGE], max_new_tokens=48))
    assert len(chunks) > 1 and all(isinstance(c, Chunk) for c in chunks)
    last = chunks[-1]
    assert last.finish_reason in ("length", "eos") and last.stats is not None
    assert all(c.finish_reason == "" and c.stats is None for c in chunks[:-1])
    spec_ids = [t for c in chunks for t in c.token_ids]
    plain = client.generate(COPY_PROMPT, chat=True, max_new_tokens=48, speculative=False)
    assert spec_ids == plain.token_ids  # greedy speculative decoding is lossless
    assert "".join(c.text for c in chunks) == plain.text
    assert last.stats.accepted_draft_tokens > 0  # the passage was drafted from and accepted
    assert last.stats.steps < last.stats.generated_tokens
    assert plain.stats.mean_accepted_tokens == pytest.approx(1.0)


def test_datastore_by_name(client: Client, server: BackgroundServer) -> None:
    info = client.add_to_datastore("normans", [PASSAGE, "Rollo was the first ruler of Normandy."])
    assert info.name == "normans" and info.documents == 2 and info.tokens > 40
    again = client.add_to_datastore("normans", ["William the Conqueror was a Norman."], compact=True)
    assert again.documents == 3 and again.segments == 1
    assert "normans" in [d.name for d in client.list_datastores()]
    prompt = "The Normans were the people who in the 10th and 11th centuries"
    spec = client.generate(prompt, max_new_tokens=24, datastore="normans")
    plain = client.generate(prompt, max_new_tokens=24, speculative=False)
    assert spec.token_ids == plain.token_ids
    early = client.generate(prompt, max_new_tokens=24, datastore="normans", self_draft_layers=20)
    assert early.token_ids == plain.token_ids  # early-exit drafts are verified like the others
    with pytest.raises(ClientError) as err:
        client.generate(prompt, datastore="missing")
    assert err.value.code == "NOT_FOUND" and "normans" in err.value.message
    with pytest.raises(ClientError) as err:
        client.add_to_datastore("bad name!", ["x"])
    assert err.value.code == "INVALID_ARGUMENT" and "must match" in err.value.message
    engine = server.runtime.generate_engine()
    limits = engine.config
    engine.config = dataclasses.replace(limits, max_add_chars=100)  # what one call may make the server hold
    try:
        with pytest.raises(ClientError) as err:
            client.add_to_datastore("normans", ["x" * 60, "y" * 60])
        assert err.value.code == "INVALID_ARGUMENT" and "max_add_chars=100" in err.value.message
    finally:
        engine.config = limits
    assert client.add_to_datastore("normans", ["Rouen is in Normandy."]).documents == 4  # nothing of it was kept


def test_stop_strings_and_token_prompt(client: Client, backbone: Backbone) -> None:
    out = client.generate("Count: one, two, three,", max_new_tokens=40, stop=[" six"])
    assert out.finish_reason == "stop" and " six" not in out.text
    ids = backbone.tokenizer("Count: one, two, three,")["input_ids"]
    by_ids = client.generate(ids, max_new_tokens=8, speculative=False)
    by_text = client.generate("Count: one, two, three,", max_new_tokens=8, speculative=False)
    assert by_ids.token_ids == by_text.token_ids


def test_seeded_sampling_is_reproducible(client: Client) -> None:
    a = client.generate("Write a word:", max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    b = client.generate("Write a word:", max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    assert a.token_ids == b.token_ids and a.finish_reason in ("length", "eos")


def test_client_cancel_stops_generation(client: Client, server: BackgroundServer) -> None:
    engine = server.runtime.generate_engine()
    stream = client.generate_stream(
        "Count from 1 to 1000, separated by commas.", chat=True, max_new_tokens=1500, speculative=False
    )
    got = [next(stream), next(stream)]
    assert engine.in_flight == 1 and all(c.finish_reason == "" for c in got)
    stream.close()  # leaves the loop early: the call is cancelled
    deadline = time.monotonic() + 30
    while engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be in 1..2048"),
        ({"max_new_tokens": 5000}, "max_new_tokens must be in 1..2048"),
        ({"temperature": -1.0}, "temperature must be in"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"stop": [""]}, "stop strings must have 1.."),
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": [10**9]}, "prompt token ids must be in"),
        ({"passages": ["x"] * 65}, "at most 64 passages"),
        ({"self_draft_layers": 30}, "self_draft_layers must be in 0..29"),
    ],
)
def test_bad_input_is_invalid_argument(client: Client, kwargs: dict, words: str) -> None:
    prompt = kwargs.pop("prompt", "Hello")
    with pytest.raises(ClientError) as err:
        client.generate(prompt, **kwargs)
    assert err.value.code == "INVALID_ARGUMENT" and words in err.value.message
    assert client.generate("Hello", max_new_tokens=2).finish_reason  # still serving


def test_answer_retrieves_compresses_and_cites(client: Client) -> None:
    docs = [
        {"id": "normans", "text": PASSAGE},
        {"id": "paris", "text": "Paris is the capital and most populous city of France."},
        {"id": "bonds", "text": "Government bond yields climbed to their highest level in a decade."},
    ]
    client.create_collection("answer_docs", mode="prompteol", sparse="bm25")
    try:
        client.upsert("answer_docs", docs)
        items = list(client.answer_stream("Who gave their name to Normandy?", "answer_docs", k=2, max_new_tokens=32))
        head = items[0]
        assert isinstance(head, AnswerContext) and head.decision == "augment"
        assert head.sources[0].id == "normans" and len(head.sources) == 2
        assert "Normans" in head.context and head.context_tokens <= head.passage_tokens
        assert items[-1].finish_reason in ("length", "eos") and items[-1].stats.generated_tokens > 0
        answer = "".join(c.text for c in items[1:])
        assert answer.strip()
        full = client.answer(
            "Who gave their name to Normandy?", "answer_docs", k=2, compression="none", max_new_tokens=8
        )
        assert full.context is not None and PASSAGE in full.context.context
        skipped = client.answer(
            "Who gave their name to Normandy?",
            "answer_docs",
            selective=True,
            budget_tokens=64,
            max_new_tokens=8,
            k=1,
            retriever="sparse",
        )
        assert skipped.context is not None and skipped.context.decision in ("augment", "skip")
        q = "Who gave their name to Normandy?"
        for threshold, decision in ((10.0, "skip"), (-10.0, "augment")):  # the selective cut, per request
            ctx = client.answer(q, "answer_docs", k=2, selective=True, threshold=threshold, max_new_tokens=2).context
            assert ctx is not None and ctx.decision == decision
        for fusion in (
            {"fusion": "rrf", "rrf_k": 1},
            {"fusion": "weighted", "alpha": 1.0},
        ):  # retrieval as Search does it
            ctx = client.answer(q, "answer_docs", k=3, retriever="hybrid", max_new_tokens=2, **fusion).context
            want = client.search("answer_docs", q, k=3, retriever="hybrid", **fusion)[0]
            assert ctx is not None and [h.id for h in ctx.sources] == [h.id for h in want]
            assert [round(h.score, 4) for h in ctx.sources] == [round(h.score, 4) for h in want]
        for kwargs, code, words in (
            ({"alpha": 2.0}, "INVALID_ARGUMENT", "alpha"),
            ({"selective": True, "threshold": float("nan")}, "INVALID_ARGUMENT", "threshold must be a finite"),
            ({"k": 0}, "INVALID_ARGUMENT", "k must be in 1..50"),
            ({"feedback_chunks": 3}, "INVALID_ARGUMENT", "learned sparse side"),  # answer_docs keeps BM25
        ):
            with pytest.raises(ClientError) as err:
                client.answer("Who?", "answer_docs", **kwargs)
            assert err.value.code == code and words in err.value.message
        for kwargs, words in (
            ({"fusion": "magic"}, "rrf, weighted"),
            ({"compression": "zip"}, "extractive, abstractive, none"),
            ({"retriever": "psychic"}, "dense, sparse, hybrid"),
        ):
            with pytest.raises(ValueError, match=words):  # names the enums lack: refused before sending
                client.answer("Who?", "answer_docs", **kwargs)
        _server_refuses_unknown_strings(client.address)
        with pytest.raises(ClientError) as err:
            client.answer("Who?", "no_such_collection")
        assert err.value.code == "NOT_FOUND"
    finally:
        client.drop_collection("answer_docs")


def _server_refuses_unknown_strings(address: str) -> None:
    """The first release's string fields still reach the engine's checks, which name the valid values."""
    import grpc

    from lodestar.generate.v1 import generate_pb2 as gpb
    from lodestar.generate.v1 import generate_pb2_grpc as gpb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gpb_grpc.GenerateServiceStub(channel)
        for fields, words in (
            ({"fusion": "magic", "retriever": "hybrid"}, "rrf, weighted"),
            ({"compression": "zip"}, "valid are extractive, abstractive, none"),
            ({"retriever": "psychic"}, "psychic"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Answer(gpb.AnswerRequest(question="Who?", collection="answer_docs", **fields), timeout=60))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()


def test_answer_retrieves_with_learned_sparse_feedback(tiny_server) -> None:  # type: ignore[no-untyped-def]
    """Answer's feedback_chunks is Search's: on a learned-sparse collection its sources are the ones
    Search returns with the same feedback, and the feedback changes the scores it would give without."""
    srv = tiny_server()
    docs = [
        {"id": "normans", "text": PASSAGE},
        {"id": "paris", "text": "Paris is the capital and most populous city of France."},
        {"id": "bonds", "text": "Government bond yields climbed to their highest level in a decade."},
    ]
    q = "Who gave their name to Normandy?"
    with Client(srv.address, timeout=120) as c:
        c.create_collection("learned_answer", mode="mean", sparse="learned", sparse_mode="echo", chunk_tokens=0)
        c.upsert("learned_answer", docs)
        for retriever in ("sparse", "hybrid"):
            how = {
                "retriever": retriever,
                "fusion": "weighted",
                "alpha": 0.3,
                "feedback_weight": 0.5,
                "length_norm": 0.5,
            }
            fed = c.answer(q, "learned_answer", k=3, feedback_chunks=2, max_new_tokens=2, **how).context
            want = c.search("learned_answer", q, k=3, feedback_chunks=2, **how)[0]
            plain = c.search("learned_answer", q, k=3, **how)[0]
            assert fed is not None and [h.id for h in fed.sources] == [h.id for h in want]
            assert [round(h.score, 4) for h in fed.sources] == [round(h.score, 4) for h in want]
            assert [round(h.score, 4) for h in want] != [round(h.score, 4) for h in plain]
        with pytest.raises(ClientError) as err:
            c.answer(
                q, "learned_answer", k=3, retriever="sparse", feedback_chunks=2, feedback_weight=11.0, max_new_tokens=2
            )
        assert err.value.code == "INVALID_ARGUMENT" and "feedback_weight=11.0 is out of range" in err.value.message


def test_answer_takes_a_generation_slot_before_it_retrieves(tiny_server) -> None:  # type: ignore[no-untyped-def]
    """Answer counts against max_concurrent_generations from its start: a full server refuses it
    (RESOURCE_EXHAUSTED) before retrieval and compression run, and every slot comes back."""
    srv = tiny_server(max_concurrent_generations=1)
    engine = srv.runtime.generate_engine()
    with Client(srv.address, timeout=60, channel=NO_RETRIES) as c:
        c.create_collection("slots", mode="mean", sparse="bm25")
        c.upsert("slots", [{"id": "n", "text": PASSAGE}])
        stream = c.generate_stream("a", max_new_tokens=450, speculative=False)
        next(stream)
        with pytest.raises(ClientError) as err:
            c.answer("Who were the Normans?", "slots", max_new_tokens=4)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "max_concurrent_generations=1" in err.value.message
        with pytest.raises(ClientError) as err:  # retrieval never ran: it would have said NOT_FOUND
            c.answer("Who were the Normans?", "no_such_collection", max_new_tokens=4)
        assert err.value.code == "RESOURCE_EXHAUSTED"
        stream.close()
        deadline = time.monotonic() + 30
        while engine.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        out = c.answer("Who were the Normans?", "slots", max_new_tokens=4, compression="none")
        assert out.context is not None and out.context.sources[0].id == "n"
        with pytest.raises(ClientError):  # fails after taking its slot: the slot is returned
            c.answer("Who were the Normans?", "slots", max_new_tokens=4, datastore="missing")
    assert engine.in_flight == 0


def test_capacity_and_answer_needs_retrieval(tiny_server) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server(max_concurrent_generations=1, only=("embed", "generate"))
    with Client(srv.address, timeout=60, channel=NO_RETRIES) as c:
        stream = c.generate_stream("a", max_new_tokens=450, speculative=False)
        next(stream)
        with pytest.raises(ClientError) as err:
            c.generate("b", max_new_tokens=4)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "max_concurrent_generations=1" in err.value.message
        stream.close()
        with pytest.raises(ClientError) as err:
            c.answer("Who?", "docs")
        assert err.value.code == "UNAVAILABLE" and "retrieve" in err.value.message
