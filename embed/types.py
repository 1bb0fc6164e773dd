"""Request and result types of the embedding engine (no torch: the client uses them too).

The types other engines exchange with an embedder live in `lodestar.embedding` (so retrieval and
compression need not import this package); they are re-exported here for embed's own code.
"""

from __future__ import annotations

from lodestar.embedding import SPARSE_CAP, EmbedOptions, EmbedResult

__all__ = ["SPARSE_CAP", "SPARSE_SHIFT", "EmbedOptions", "EmbedResult"]

SPARSE_SHIFT = (
    4.0  # learned sparse: a vocabulary entry counts once its logit is this many standard deviations above the mean
)
