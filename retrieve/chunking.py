"""Token-window chunking: character spans of fixed-size, overlapping windows of a tokenised text.

The caller tokenises once with a fast tokenizer (offset_mapping) and slices the text by these spans,
so chunks line up with token boundaries and each holds at most `size` tokens.
"""

from __future__ import annotations

import numpy as np

from lodestar.errors import InvalidInput


def chunk_spans(offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Char spans [start, end) of windows of `size` tokens advancing by size - overlap.

    - Zero-width offsets (special tokens such as BOS, reported as (0, 0)) are not tokens of the text.
    - size 0 means no chunking: one span over all the tokens.
    - Windows stop at the first one that reaches the text's last token, so the last window may be
      shorter than `size` (it is never moved back: that would make a near-duplicate of its
      neighbour, and near-duplicates crowd each other in top-k results).
    - A text with no tokens gives [(0, 0)]; the caller treats it as one chunk of the whole text.
    """
    if not isinstance(size, int) or size < 0:
        raise InvalidInput(f"chunk size must be an integer >= 0 (0 = no chunking); got {size!r}")
    if not isinstance(overlap, int) or overlap < 0:
        raise InvalidInput(f"chunk overlap must be an integer >= 0; got {overlap!r}")
    if size and overlap >= size:
        raise InvalidInput(f"chunk overlap {overlap} must be smaller than the chunk size {size}")
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2) if len(offsets) else np.empty((0, 2), np.int64)
    if (spans < 0).any() or (spans[:, 1] < spans[:, 0]).any():
        raise InvalidInput("token offsets must be (start, end) pairs with 0 <= start <= end")
    spans = spans[spans[:, 1] > spans[:, 0]]  # (T, 2) real tokens only
    n = spans.shape[0]
    if n == 0:
        return [(0, 0)]
    # Offsets are almost always ascending; these make a window's span cover all of its tokens anyway.
    first = np.minimum.accumulate(spans[::-1, 0])[::-1]  # (T,) smallest start at or after each token
    last = np.maximum.accumulate(spans[:, 1])  # (T,) largest end at or before each token
    if size == 0 or n <= size:
        return [(int(first[0]), int(last[-1]))]
    step = size - overlap
    starts = range(0, n - overlap, step)  # the window starting at n - overlap would add nothing new
    return [(int(first[s]), int(last[min(s + size, n) - 1])) for s in starts]
