"""Draft trees: flattening (mask, depth, positions) on hand-made trees, trie fusion and scoring,
best-first pruning under a budget and a cost model, and the context n-gram source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lodestar.generate.costmodel import CostModel
from lodestar.generate.ngram import context_candidates
from lodestar.generate.tree import DraftTree, flatten, match_confidence
from lodestar.generate.types import Candidates


def test_flatten_hand_made_tree() -> None:
    #        0(r)
    #       /    \
    #     1(a)   2(b)
    #     /  \      \
    #   3(c) 4(d)   5(e)
    #    |
    #   6(f)
    tree = flatten([10, 11, 12, 13, 14, 15, 16], [-1, 0, 0, 1, 1, 2, 3], [1, 0.9, 0.2, 0.5, 0.6, 0.1, 0.4])
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert tree.position_ids(7).tolist() == [7, 8, 8, 9, 9, 9, 10]
    expected = np.array(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 0, 1, 0, 0, 1, 0],
            [1, 1, 0, 1, 0, 0, 1],
        ],
        dtype=bool,
    )
    assert (tree.mask == expected).all()
    assert tree.children[0] == [1, 2] and tree.children[1] == [4, 3]  # best score first
    assert tree.path_to(6) == [0, 1, 3, 6]
    full = tree.attention_mask(5)
    assert full.shape == (1, 1, 7, 12) and full.dtype == torch.bool
    assert full[0, 0, :, :5].all()  # the cached prefix is visible to every node
    assert (full[0, 0, :, 5:].numpy() == expected).all()


def test_flatten_rejects_bad_parents() -> None:
    with pytest.raises(ValueError):
        flatten([1, 2], [-1, 1])
    with pytest.raises(ValueError):
        flatten([1], [0])


def cands(seqs: list[tuple[tuple[int, ...], float]], source: str = "datastore", m: int = 4) -> Candidates:
    return Candidates(source, m, seqs, int(sum(c for _, c in seqs)))


def test_trie_fusion_counts_and_monotone_scores() -> None:
    tree = DraftTree(0)
    tree.add(cands([((1, 2, 3), 3.0), ((1, 2, 4), 1.0), ((5,), 4.0)]), confidence=1.0)
    tree.add(cands([((1, 2, 3, 9), 1.0)], source="context"), confidence=0.5)
    # Shared prefixes are one path: 0 -> 1 -> 2 -> {3 -> 9, 4}, and 0 -> 5.
    assert len(tree) == 7
    flat = tree.prune(max_nodes=100)
    by_token = {int(t): float(s) for t, s in zip(flat.tokens, flat.scores)}
    assert by_token[1] == pytest.approx(0.5)  # max(4/8, 0.5 ** 1)
    assert by_token[5] == pytest.approx(0.5)
    assert by_token[3] == pytest.approx(0.375)  # datastore 3/8 beats context 0.5 ** 3
    assert by_token[9] == pytest.approx(0.0625)  # context only: 0.5 ** 4
    for i in range(1, flat.size):
        assert flat.scores[i] <= flat.scores[flat.parents[i]] + 1e-12


def test_noisy_or_lets_sources_reinforce() -> None:
    tree = DraftTree(0, fusion="noisy_or")
    tree.add(cands([((7,), 1.0)]), confidence=0.5)
    tree.add(cands([((7,), 1.0)], source="context"), confidence=0.5)
    assert tree.score(1) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="valid: max, noisy_or"):
        DraftTree(0, fusion="mean")


def test_prune_budget_keeps_ancestors_and_depth() -> None:
    tree = DraftTree(0)
    tree.add(cands([((1, 2, 3, 4, 5), 5.0), ((6, 7), 3.0), ((8,), 2.0)]), confidence=0.9)
    flat = tree.prune(max_nodes=3)
    assert flat.size == 4
    for i in range(1, flat.size):
        assert 0 <= flat.parents[i] < i
    flat = tree.prune(max_nodes=100, max_depth=2)
    assert flat.depth.max() == 2
    flat = tree.prune(max_nodes=100, min_score=0.45)
    assert all(s >= 0.45 for s in flat.scores)


def test_cost_model_pads_to_cheaper_lengths() -> None:
    cm = CostModel((1.0, 1.1, 1.3, 2.0, 2.5, 1.8))
    assert cm.padded_length(1) == 1
    assert cm.padded_length(4) == 6  # 6 tokens cost less than 4
    assert cm.envelope(4) == 1.8
    assert cm.cost(12) == pytest.approx(3.6)  # linear past the table
    with pytest.raises(ValueError):
        CostModel(())


def test_cost_aware_prune_stops_when_nodes_do_not_pay() -> None:
    flat_cost = CostModel((1.0,) + (10.0,) * 31)  # any draft costs 10 forwards: never worth it
    tree = DraftTree(0)
    tree.add(cands([((1, 2, 3), 1.0)]), confidence=0.9)
    assert tree.prune(31, cost=flat_cost).size == 1
    cheap = CostModel((1.0,) + (1.01,) * 31)
    assert tree.prune(31, cost=cheap).size == 4
    assert tree.prune(31, cost=cheap, gain_scale=0.0).size == 1  # drafts have not been paying off


def test_match_confidence_grows_with_match_length() -> None:
    vals = [match_confidence(0.9, m) for m in range(1, 9)]
    assert vals == sorted(vals) and vals[-1] < 0.9


def test_context_candidates_prefers_longest_recent_match() -> None:
    ctx = np.array([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3], dtype=np.int64)
    found = context_candidates(ctx, max_n=4, min_n=1, max_continuation=3)
    assert found is not None
    assert found.match_len == 3 and found.seqs[0][0] == (4, 9, 2)  # "1 2 3" seen once before
    found = context_candidates(np.array([5, 6, 7], dtype=np.int64), min_n=1)
    assert found is None
