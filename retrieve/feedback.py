"""Pseudo-relevance feedback for learned-sparse queries (Rocchio): the first ranking's best chunks
are folded into the query before the ranking that counts."""

from __future__ import annotations

import numpy as np

FEEDBACK_TERMS = 64  # terms the feedback adds to a query at most
MAX_FEEDBACK_CHUNKS = 100


def _sum_by_term(terms: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique term ids ascending, the float64 sum of each one's weights)."""
    t, inverse = np.unique(terms, return_inverse=True)
    w = np.zeros(t.size)
    np.add.at(w, inverse, weights)
    return t, w


def feedback_query(
    query: tuple[np.ndarray, np.ndarray],
    chunks: list[tuple[np.ndarray, np.ndarray]],
    weight: float,
    terms: int = FEEDBACK_TERMS,
) -> tuple[np.ndarray, np.ndarray]:
    """Rocchio pseudo-relevance feedback for a learned-sparse query: the query scaled to unit length,
    plus `weight` times the mean of the `chunks`' unit-length vectors (the first ranking's best chunks)
    cut to its `terms` largest weights. The index then scales the sum by IDF as it does any query.
    Both were checked before (`sparse_vector`: the query by the first ranking, the chunks when stored).
    -> (term ids ascending, weights); the query itself where no chunk has a weight."""
    qt, qw = query
    found = [(t, w / np.linalg.norm(w)) for t, w in chunks if len(t)]
    if not found or not len(qt):
        return qt, qw
    ct, cw = _sum_by_term(
        np.concatenate([t for t, _ in found]), np.concatenate([w for _, w in found]).astype(np.float64)
    )
    cw /= len(found)
    if ct.size > terms:
        keep = np.sort(np.argsort(-cw, kind="stable")[:terms])
        ct, cw = ct[keep], cw[keep]
    t, w = _sum_by_term(np.concatenate([qt, ct]), np.concatenate([qw / np.linalg.norm(qw), weight * cw]))
    return t, w.astype(np.float32)
