"""Compress and Answer stop at their next batch or decoding-step boundary once their call is
cancelled (lodestar/cancel.py), with the real tiny model: a forward pre-hook on every decoder stack
counts the forwards that start after the cancel; the one running when it landed may finish.
No timing: the hook itself cancels the token after the n-th forward."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tinymodel import counting  # noqa: E402  (tests/ is on sys.path)

from lodestar.backbone import Backbone
from lodestar.cancel import Token, running
from lodestar.compress_ctx.engine import CompressionEngine
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.errors import Cancelled
from lodestar.services.client import Client, ClientError
from lodestar.services.server import BackgroundServer
from lodestar.services.settings import Settings

PASSAGES = [
    f"Passage {p} sentence {s} tells about the river number {p * 10 + s} and its many bridges."
    for p in range(6)
    for s in range(6)
]
PASSAGES = [" ".join(PASSAGES[i : i + 6]) for i in range(0, len(PASSAGES), 6)]  # 6 passages of 6 sentences


@pytest.fixture
def small_steps(tiny_backbone: Backbone) -> Iterator[EmbeddingEngine]:
    """The real embedder taking 4 texts per request: extractive compression embeds in steps of 4."""
    eng = EmbeddingEngine(tiny_backbone, EngineConfig(max_texts_per_request=4, max_batch_tokens=64))
    yield eng
    eng.close()


def test_extractive_compress_stops_between_embedding_steps(tiny_backbone: Backbone, small_steps: Any) -> None:
    with counting(None) as full:
        CompressionEngine(tiny_backbone, small_steps).compress("river bridges", PASSAGES, "extractive")
    assert full.total > 2  # the uncancelled call embeds in several steps

    token = Token()
    with counting(token.cancel, cancel_at=1) as seen, running(token), pytest.raises(Cancelled):
        CompressionEngine(tiny_backbone, small_steps).compress("river bridges", PASSAGES, "extractive")
    assert seen.after_cancel == 0 and seen.total < full.total


def test_abstractive_compress_stops_at_its_next_decoding_step(tiny_backbone: Backbone, small_steps: Any) -> None:
    engine = CompressionEngine(tiny_backbone, small_steps)
    with counting(None) as full:
        engine.compress("river bridges", PASSAGES[:2], "abstractive", max_new_tokens=24)
    assert full.total > 4  # a random model rarely stops early: one forward per new token

    token = Token()
    with counting(token.cancel, cancel_at=3) as seen, running(token), pytest.raises(Cancelled):
        engine.compress("river bridges", PASSAGES[:2], "abstractive", max_new_tokens=24)
    assert seen.after_cancel == 0 and seen.total == 3


def test_an_expired_compress_does_no_work(tiny_backbone: Backbone, small_steps: Any) -> None:
    token = Token.after(-1.0)  # its deadline already passed when the work starts
    with counting(None) as seen, running(token), pytest.raises(Exception) as err:
        CompressionEngine(tiny_backbone, small_steps).compress("river bridges", PASSAGES, "extractive")
    assert type(err.value).__name__ == "DeadlineExceeded" and seen.total == 0


ASK: dict[str, Any] = {"max_new_tokens": 24, "speculative": False}  # one forward per new token


@pytest.mark.parametrize("cancel_at", [1, 4])  # while retrieving (the question's embedding); while generating
def test_an_answer_stops_at_its_next_boundary_through_a_real_server(
    tiny_backbone: Backbone, tmp_path: Path, cancel_at: int
) -> None:
    """The server cancels every call in flight (what shutdown does after the grace period) from inside
    the n-th forward: no forward starts after it, and the caller hears CANCELLED or a stream that
    ends 'cancelled'."""
    srv = BackgroundServer(Settings(port=0, data_dir=tmp_path / "data"), backbone=tiny_backbone).start()
    try:
        with Client(srv.address, timeout=120) as c:
            c.create_collection("c", sparse="none")
            c.upsert("c", [{"id": f"d{i}", "text": p} for i, p in enumerate(PASSAGES)])
            with counting(None) as full:
                assert c.answer("river bridges", "c", **ASK).finish_reason != "cancelled"
            assert full.total > cancel_at + 2

            with counting(lambda: srv.runtime.tokens.cancel_all("test cancel"), cancel_at) as seen:
                try:
                    assert c.answer("river bridges", "c", **ASK).finish_reason == "cancelled"
                except ClientError as err:
                    assert err.code == "CANCELLED"
            assert seen.total == cancel_at and seen.after_cancel == 0
    finally:
        srv.stop(grace=0)
