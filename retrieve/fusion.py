"""Hybrid fusion of ranked lists (dense + sparse): reciprocal rank fusion and min-max weighting.

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


def weighted(
    dense: list[tuple[Id, float]], sparse: list[tuple[Id, float]], alpha: float = 0.5
) -> list[tuple[Id, float]]:
    """alpha * dense + (1 - alpha) * sparse, each list min-max scaled to [0, 1]; a miss scores 0.

    Note the lowest hit of each list also scales to 0, the same as a miss: min-max is relative.
    """
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be between 0 and 1; got {alpha!r}")
    d = _minmax(_clean(dense))
    s = _minmax(_clean(sparse))
    fused = {doc: alpha * d.get(doc, 0.0) + (1.0 - alpha) * s.get(doc, 0.0) for doc in d.keys() | s.keys()}
    return _ordered(fused)
