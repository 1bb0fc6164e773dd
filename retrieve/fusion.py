"""Hybrid fusion of ranked lists (dense + sparse): reciprocal rank fusion, min-max weighting and
distribution-based score fusion (DBSF), optionally weighted per query by how distinct each side's top
hit is (a side whose top scores are flat says little about this query).

Ids are ints (chunk ids) or strings (document ids), one kind per call. Both functions return every
id that appears in any input, best first, ties (equal to 12 decimals) broken by smaller id so
results are deterministic; callers cut to k. Padding entries (negative int ids, non-finite scores)
are skipped.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import TypeVar

from lodestar.errors import InvalidInput

Id = TypeVar("Id", int, str)


def _clean(ranking: list[tuple[Id, float]]) -> list[tuple[Id, float]]:
    """The ranking without padding (-1 ids, -inf scores) and without repeats of an id (first wins)."""
    seen: set[Id] = set()
    out = []
    for doc, score in ranking:
        if isinstance(doc, Integral):
            doc = int(doc)  # numpy ints hash and print like ints from here on
            if doc < 0:
                continue
        if not math.isfinite(score) or doc in seen:
            continue
        seen.add(doc)
        out.append((doc, float(score)))
    return out


def _ordered(scores: dict[Id, float]) -> list[tuple[Id, float]]:
    """(id, score) best first; scores equal to 12 decimals (float noise) are ties, broken by smaller id."""
    return sorted(scores.items(), key=lambda item: (-round(item[1], 12), item[0]))


def rrf(rankings: list[list[tuple[Id, float]]], k: int = 60) -> list[tuple[Id, float]]:
    """Reciprocal rank fusion: score = sum over rankings of 1 / (k + rank), rank starting at 1.

    Only positions matter (scores of different retrievers are not comparable); k damps the weight
    of the very top ranks (Cormack et al. 2009 use 60).
    """
    if not isinstance(k, int) or k < 0:
        raise InvalidInput(f"rrf k must be an integer >= 0; got {k!r}")
    fused: dict[Id, float] = {}
    for ranking in rankings:
        for rank, (doc, _) in enumerate(_clean(ranking), start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return _ordered(fused)


def _minmax(ranking: list[tuple[Id, float]]) -> dict[Id, float]:
    """Scores scaled to [0, 1] within one list; a list whose scores are all equal maps to 1."""
    if not ranking:
        return {}
    low = min(s for _, s in ranking)
    high = max(s for _, s in ranking)
    if high == low:
        return {doc: 1.0 for doc, _ in ranking}
    return {doc: (s - low) / (high - low) for doc, s in ranking}


def _distribution(ranking: list[tuple[Id, float]]) -> dict[Id, float]:
    """DBSF's scaling: [mean - 3 std, mean + 3 std] of the list's scores mapped to [0, 1] (not clipped);
    a list of one score, or of equal scores, maps to 1 (as min-max does)."""
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    if std == 0.0:
        return {doc: 1.0 for doc, _ in ranking}
    return {doc: (s - mean + 3.0 * std) / (6.0 * std) for doc, s in ranking}


def top_distinctness(ranking: list[tuple[Id, float]], top: int = 10) -> float:
    """How far the list's best score stands above its next `top` - 1, in standard deviations of the
    whole list (0 for a flat list or one of fewer than 2 hits): a side that cannot tell its top hit
    from the rest says little about this query."""
    scores = [s for _, s in ranking]
    if len(scores) < 2:
        return 0.0
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    if std == 0.0:
        return 0.0
    head = scores[:top]
    return max(0.0, (head[0] - sum(head[1:]) / max(1, len(head) - 1)) / std)


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be between 0 and 1; got {alpha!r}")


def weighted(
    dense: list[tuple[Id, float]], sparse: list[tuple[Id, float]], alpha: float = 0.5
) -> list[tuple[Id, float]]:
    """alpha * dense + (1 - alpha) * sparse, each list min-max scaled to [0, 1]; a miss scores 0.

    Note the lowest hit of each list also scales to 0, the same as a miss: min-max is relative.
    """
    _check_alpha(alpha)
    return _combine(_minmax(_clean(dense)), _minmax(_clean(sparse)), alpha)


def dbsf(
    dense: list[tuple[Id, float]], sparse: list[tuple[Id, float]], alpha: float = 0.5, adaptive: bool = False
) -> list[tuple[Id, float]]:
    """Distribution-based score fusion: alpha * dense + (1 - alpha) * sparse, each list scaled by its
    own mean +- 3 standard deviations; a miss scores 0 (alpha 0.5 ranks as an equal sum).

    adaptive: per query, each side's weight is further multiplied by `top_distinctness` of its list,
    so a side with flat top scores (it cannot tell its best hit from the rest) counts less.
    """
    _check_alpha(alpha)
    d, s = _clean(dense), _clean(sparse)
    if adaptive:
        wd, ws = alpha * top_distinctness(d), (1.0 - alpha) * top_distinctness(s)
        alpha = wd / (wd + ws) if wd + ws > 0 else alpha
    return _combine(_distribution(d), _distribution(s), alpha)


def _combine(d: dict[Id, float], s: dict[Id, float], alpha: float) -> list[tuple[Id, float]]:
    fused = {doc: alpha * d.get(doc, 0.0) + (1.0 - alpha) * s.get(doc, 0.0) for doc in d.keys() | s.keys()}
    return _ordered(fused)
