"""Hybrid fusion: reciprocal rank fusion, min-max weighting and DBSF (plain and adaptive) on examples worked out by hand."""

from __future__ import annotations

import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.fusion import rrf, weighted


def test_rrf_by_hand() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    sparse = [(3, 12.0), (1, 7.0), (4, 1.0)]
    fused = rrf([dense, sparse], k=60)
    want = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 63}
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert dict(fused) == pytest.approx(want)


def test_rrf_ties_by_id_and_k_zero() -> None:
    # 7 and 5 each hold rank 1 in one list and nothing else: equal scores, smaller id first
    assert rrf([[(7, 1.0)], [(5, 1.0)]], k=0) == [(5, 1.0), (7, 1.0)]
    assert rrf([]) == [] and rrf([[], []]) == []


def test_rrf_skips_padding_and_repeats() -> None:
    fused = rrf([[(-1, float("-inf")), (8, 2.0), (8, 1.0), (9, 0.5)]], k=1)
    assert fused == [(8, pytest.approx(1 / 2)), (9, pytest.approx(1 / 3))]  # padding takes no rank
    with pytest.raises(InvalidInput, match="rrf k must be an integer >= 0"):
        rrf([[(1, 1.0)]], k=-1)


def test_weighted_by_hand() -> None:
    dense = [(1, 0.9), (2, 0.7), (3, 0.5)]  # -> 1.0, 0.5, 0.0
    sparse = [(3, 10.0), (4, 6.0), (1, 2.0)]  # -> 1.0, 0.5, 0.0
    fused = weighted(dense, sparse, alpha=0.5)
    assert [i for i, _ in fused] == [1, 3, 2, 4]  # 1/3 and 2/4 tie: smaller id first
    assert [s for _, s in fused] == pytest.approx([0.5, 0.5, 0.25, 0.25])
    only_dense = weighted(dense, sparse, alpha=1.0)
    assert [i for i, _ in only_dense][:2] == [1, 2] and dict(only_dense)[4] == 0.0
    fused = weighted(dense, sparse, alpha=0.8)
    assert dict(fused) == pytest.approx({1: 0.8, 2: 0.4, 3: 0.2, 4: 0.1})


def test_string_ids() -> None:
    """The engine fuses per document, whose ids are strings."""
    fused = rrf([[("b", 3.0), ("a", 2.0)], [("a", 9.0), ("c", 1.0)]], k=0)
    assert fused == [("a", pytest.approx(1.5)), ("b", 1.0), ("c", 0.5)]
    assert weighted([("x", 2.0), ("y", 1.0)], [("y", 5.0)], alpha=0.5) == [("x", 0.5), ("y", 0.5)]


def test_weighted_edges() -> None:
    assert weighted([(5, 0.3)], []) == [(5, 0.5)]  # a single hit is its list's best: 1.0 * alpha
    assert weighted([(2, 1.0), (1, 1.0)], [], alpha=1.0) == [(1, 1.0), (2, 1.0)]  # equal scores -> 1, ties by id
    assert weighted([], []) == []
    assert weighted([(1, 0.5), (-1, float("-inf"))], [(1, 3.0)]) == [(1, 1.0)]
    for alpha in (-0.1, 1.5):
        with pytest.raises(InvalidInput, match="alpha must be between 0 and 1"):
            weighted([], [], alpha=alpha)


def test_dbsf_scales_each_list_by_its_mean_and_three_deviations() -> None:
    from lodestar.retrieve.fusion import dbsf

    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]  # mean 0.5, std 0.327
    sparse = [("c", 30.0), ("a", 10.0)]  # mean 20, std 10
    fused = dict(dbsf(dense, sparse))
    std = (((0.4**2) * 2) / 3) ** 0.5
    a = 0.5 * (0.9 - 0.5 + 3 * std) / (6 * std) + 0.5 * (10 - 20 + 30) / 60
    assert fused["a"] == pytest.approx(a)
    assert fused["b"] == pytest.approx(0.5 * 0.5)  # the mean maps to 0.5; a miss on the other side is 0
    assert [d for d, _ in dbsf(dense, sparse, alpha=1.0)][:3] == ["a", "b", "c"]  # alpha 1: dense order
    with pytest.raises(InvalidInput, match="alpha must be between 0 and 1"):
        dbsf(dense, sparse, alpha=1.5)


def test_adaptive_dbsf_follows_the_side_whose_top_hit_stands_out() -> None:
    from lodestar.retrieve.fusion import dbsf, top_distinctness

    flat = [(f"d{i}", 1.0 - 0.001 * i) for i in range(20)]  # cannot tell its best from the rest
    sharp = [("x", 10.0)] + [(f"d{i}", 1.0) for i in range(19, 0, -1)]  # one clear winner
    assert top_distinctness(sharp) > 3 > top_distinctness(flat)
    assert top_distinctness([("only", 1.0)]) == 0.0
    assert dbsf(flat, sharp, adaptive=True)[0][0] == "x"
    assert dbsf(sharp, flat, adaptive=True)[0][0] == "x"  # either side
