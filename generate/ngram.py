"""Draft candidates from the request's own context (prompt + generated so far): prompt-lookup n-grams.

The longest recent n-gram ending the context that occurred earlier proposes what followed it then.
This catches the model repeating itself and copying from passages placed in the prompt.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lodestar.generate.types import Candidates


def context_candidates(
    context: np.ndarray,
    max_n: int = 8,
    min_n: int = 2,
    max_continuation: int = 12,
    max_matches: int = 8,
    source: str = "context",
) -> Candidates | None:
    """Continuations after earlier occurrences of the context's last n tokens (n from max_n down)."""
    T = int(context.shape[0])
    if T < min_n + 1:
        return None
    last = context[-1]
    # Candidate end positions: earlier places holding the last token, with room before them.
    ends = np.flatnonzero(context[:-1] == last)  # (K,) index of the matched n-gram's last token
    if ends.size == 0:
        return None
    for n in range(min(max_n, T - 1), min_n - 1, -1):
        e = ends[ends >= n - 1]
        if e.size == 0:
            continue
        ok = np.ones(e.shape[0], dtype=bool)
        for j in range(1, n):  # compare backwards; n is small
            ok &= context[e - j] == context[T - 1 - j]
            if not ok.any():
                break
        hits = e[ok]
        if hits.size == 0:
            continue
        hits = hits[::-1][:max_matches]  # most recent first
        out: defaultdict[tuple[int, ...], float] = defaultdict(float)
        for h in hits.tolist():
            cont = context[h + 1 : h + 1 + max_continuation]
            if cont.size:
                out[tuple(cont.tolist())] += 1.0
        if out:
            return Candidates(source, n, sorted(out.items(), key=lambda kv: -kv[1]), int(ok.sum()))
    return None
