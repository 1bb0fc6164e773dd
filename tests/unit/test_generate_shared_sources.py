"""Draft sources shared across requests: the output history (earlier outputs searched like a
datastore) and token recycling (each token's top-k successors from past logits). Greedy output stays
identical to plain decoding; plain and seeded-sampling requests neither read nor feed them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lodestar.backbone import Backbone
from lodestar.generate.datastore import LookupConfig
from lodestar.generate.decoder import DecoderConfig, SpeculativeDecoder
from lodestar.generate.drafter import DraftConfig
from lodestar.generate.history import OutputHistory
from lodestar.generate.recycle import SuccessorTable
from lodestar.generate.types import GenerationParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOOKUP = LookupConfig(max_match=8, min_match=2, max_continuation=6)


def test_history_finds_continuations_of_earlier_outputs_and_drops_the_oldest() -> None:
    h = OutputHistory(max_tokens=12, max_segments=2)
    h.add([1, 2, 3, 4, 5])
    found = h.lookup([9, 2, 3], LOOKUP)
    assert found is not None and found.source == "history" and found.match_len == 2
    assert found.seqs[0][0] == (4, 5)
    h.add([7, 8, 9])
    h.add([2, 3, 6])  # over 12 tokens with separators: the first output is dropped
    found = h.lookup([2, 3], LOOKUP)
    assert found is not None and [s for s, _ in found.seqs] == [(6,)]
    h.clear()
    assert h.num_tokens == 0 and h.lookup([2, 3], LOOKUP) is None


def test_successor_table_walks_top_k_paths() -> None:
    table = SuccessorTable(vocab_size=10, k=3)
    assert table.candidates(1) is None  # never seen
    logits = torch.full((2, 10), -5.0)  # (N, V)
    logits[0, [2, 3, 4]] = torch.tensor([3.0, 2.0, 1.0])  # after token 1: 2, then 3, then 4
    logits[1, [5, 6, 7]] = torch.tensor([3.0, 2.0, 1.0])  # after token 2: 5, 6, 7
    table.update(np.array([1, 2]), logits)
    assert table.table[1].tolist() == [2, 3, 4]
    found = table.candidates(1, max_paths=4, max_depth=2)
    assert found is not None and found.source == "recycle"
    paths = dict(found.seqs)
    best = max(paths, key=lambda p: paths[p])
    assert best[:2] == (2, 5)  # the top-1 chain weighs most
    assert all(len(p) <= 2 for p in paths)


SHARED = DecoderConfig(calibrate_cost=False, draft=replace(DraftConfig(), history=True, recycle=True))


def test_greedy_identical_with_shared_sources_and_history_helps_a_repeat(tiny_backbone: Backbone) -> None:
    decoder = SpeculativeDecoder(tiny_backbone, None, SHARED)
    prompt = "Once upon a time in a small village by the river"
    plain = decoder.generate(prompt, GenerationParams(max_new_tokens=32, speculative=False))
    assert decoder.drafter.history is not None and decoder.drafter.history.num_tokens == 0  # plain feeds nothing
    assert decoder.drafter.recycle is not None and (decoder.drafter.recycle.table < 0).all()
    first = decoder.generate(prompt, GenerationParams(max_new_tokens=32))
    second = decoder.generate(prompt, GenerationParams(max_new_tokens=32))
    assert first.token_ids == plain.token_ids == second.token_ids
    assert decoder.drafter.history.num_tokens > 0
    assert second.stats.accepted_draft_tokens > first.stats.accepted_draft_tokens
    assert second.stats.steps < first.stats.steps


def test_seeded_sampling_ignores_the_shared_sources(tiny_backbone: Backbone) -> None:
    """A seeded request draws the same tokens whatever earlier requests left in the shared tables."""
    params = GenerationParams(max_new_tokens=24, temperature=0.8, seed=7)
    fresh = SpeculativeDecoder(tiny_backbone, None, SHARED)
    used = SpeculativeDecoder(tiny_backbone, None, SHARED)
    for p in ("The river", "A small village", "The river ran"):
        used.generate(p, GenerationParams(max_new_tokens=24))
    assert fresh.generate("The river", params).token_ids == used.generate("The river", params).token_ids


def test_sources_are_off_by_default_and_the_server_setting_turns_them_on(tiny_backbone: Backbone, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Measured slower on code completion (2.09x without, 1.62x with), so they are opt-in."""
    from lodestar.services.runtime import Runtime
    from lodestar.services.settings import Settings

    decoder = SpeculativeDecoder(tiny_backbone, None, DecoderConfig(calibrate_cost=False))
    assert decoder.drafter.history is None and decoder.drafter.recycle is None
    for on in (False, True):
        engine = type("E", (), {"backbone": tiny_backbone})()
        generation = Runtime(Settings(shared_drafts=on, data_dir=tmp_path), [])._build_generation(engine)  # type: ignore[arg-type]
        assert generation.config.decoder.draft.history is on and generation.config.decoder.draft.recycle is on
    plain = decoder.generate("The river", GenerationParams(max_new_tokens=16, speculative=False))
    assert decoder.generate("The river", GenerationParams(max_new_tokens=16)).token_ids == plain.token_ids
