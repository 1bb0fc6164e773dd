"""CompressService over real gRPC with the bundled model: exact spans, budgets, selective
augmentation, the abstractive path, and bad input answered with INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from lodestar.services.client import Client, ClientError

pytestmark = pytest.mark.slow

QUERY = "Who gave their name to Normandy?"
PASSAGES = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
    "Paris is the capital and most populous city of France. It is known for its museums and architecture.",
    "The Seine flows through Paris. Its basin covers much of northern France, including Normandy.",
]


def test_extractive_spans_map_back_exactly(client: Client) -> None:
    res = client.compress(QUERY, PASSAGES, budget_tokens=40)
    assert res.decision == "augment" and res.text and res.spans
    assert res.tokens_after <= 40 and res.tokens_before > res.tokens_after
    for span in res.spans:
        piece = PASSAGES[span.passage][span.start : span.end]
        assert piece and piece in res.text
    assert "Normans" in res.text
    assert res.compression_rate == pytest.approx(res.tokens_after / res.tokens_before)


def test_budgets_top_n_and_order(client: Client) -> None:
    one = client.compress(QUERY, PASSAGES, top_n=1, order="score")
    assert len(one.spans) == 1
    by_score = client.compress(QUERY, PASSAGES, top_n=3, order="score")
    scores = [s.score for s in by_score.spans]
    assert scores == sorted(scores, reverse=True)
    ordered = client.compress(QUERY, PASSAGES, top_n=3, order="original")
    assert [(s.passage, s.start) for s in ordered.spans] == sorted((s.passage, s.start) for s in ordered.spans)
    small = client.compress(QUERY, PASSAGES, budget_tokens=12)
    assert small.tokens_after <= 12


def test_selective_augmentation_returns_nothing_below_threshold(client: Client) -> None:
    res = client.compress(QUERY, PASSAGES, selective=True, threshold=10.0)
    assert res.decision == "skip" and res.text == "" and res.spans == [] and res.tokens_after == 0
    assert res.score is not None and res.threshold == pytest.approx(10.0)
    assert "below the threshold" in res.reason
    default = client.compress(QUERY, PASSAGES, selective=True)  # calibrated default threshold
    assert default.decision == "augment" and default.threshold is not None


def test_abstractive_summary_is_bounded_and_checked(client: Client) -> None:
    res = client.compress(QUERY, PASSAGES[:1], method="abstractive", max_new_tokens=24)
    assert res.method == "abstractive" and res.spans == []
    assert res.decision in ("augment", "skip")
    assert res.tokens_after <= 24 + 4  # the summary is tidied, never longer than asked
    assert res.faithfulness is not None and res.faithfulness.content_words >= res.faithfulness.unsupported_words


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"passages": []}, "passages is empty"),
        ({"budget_tokens": 0}, "budget_tokens must be > 0"),
        ({"budget_tokens": -5}, "budget_tokens must be > 0"),
        ({"budget_ratio": 1.5}, "budget_ratio must be in (0, 1]"),
        ({"top_n": 0}, "top_n must be > 0"),
        ({"passages": ["x"] * 101}, "max_passages=100"),
        ({"passages": ["ok", "  "]}, "passage 1 is empty"),
        ({"query": ""}, "query is empty"),
        ({"method": "abstractive", "max_new_tokens": 1000}, "max_new_tokens must be in 1..256"),
        ({"sentence_options": {"mode": "bogus"}}, "bogus"),
        ({"method": "abstractive", "adapter": "no-such-adapter"}, "unknown adapter 'no-such-adapter'"),
        ({"adapter": "some-adapter"}, "abstractive summariser's"),
    ],
)
def test_bad_input_is_invalid_argument(client: Client, kwargs: dict, words: str) -> None:
    query = kwargs.pop("query", QUERY)
    passages = kwargs.pop("passages", PASSAGES)
    with pytest.raises(ClientError) as err:
        client.compress(query, passages, **kwargs)
    assert err.value.code == "INVALID_ARGUMENT" and words in err.value.message
    assert client.compress(QUERY, PASSAGES, top_n=1).spans  # still serving


def test_unknown_names_are_refused_by_the_client_and_by_the_server(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    """The client refuses a name its enums lack before sending; the server refuses the first release's
    strings and enum numbers it does not know, naming the valid values."""
    import grpc

    from lodestar.compress_ctx.v1 import compress_pb2 as cpb
    from lodestar.compress_ctx.v1 import compress_pb2_grpc as cpb_grpc

    with pytest.raises(ValueError, match="valid are extractive, abstractive"):
        client.compress(QUERY, PASSAGES, method="magic")
    with pytest.raises(ValueError, match="valid are original, score"):
        client.compress(QUERY, PASSAGES, order="random")
    with grpc.insecure_channel(server.address) as channel:
        stub = cpb_grpc.CompressServiceStub(channel)
        for req, words in [
            (cpb.CompressRequest(query=QUERY, passages=PASSAGES, method="magic"), "valid are extractive, abstractive"),
            (cpb.CompressRequest(query=QUERY, passages=PASSAGES, order="random"), "valid are original, score"),
            (cpb.CompressRequest(query=QUERY, passages=PASSAGES, compressor=9), "compressor: unknown value 9"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Compress(req, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()


def test_info(client: Client) -> None:
    info = client.compress_info()
    assert info.methods == ["extractive", "abstractive"] and info.default_mode == "prompteol"
    assert info.max_passages == 100 and 0 < info.threshold < 1
