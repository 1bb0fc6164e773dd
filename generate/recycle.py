"""Token recycling: every verification forward already computed the model's next-token logits after
each tree node; keep each token's top-k successors from the latest of them in a (V, k) table, and
when retrieval finds nothing, draft a small tree by walking the table from the pending token.

The table is global to the decoder (it warms up across requests) and costs no extra forward: a
top-k over logits the step computed anyway. It is a context-free guess (what followed this token
the last time the model saw it), so its trust ratio, like every source's, is learned per request.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from lodestar.generate.types import Candidates


class SuccessorTable:
    """(V, K) int32 token ids, best first; -1 where a token has not been seen yet."""

    def __init__(self, vocab_size: int, k: int = 8) -> None:
        self.k = k
        self.table = np.full((vocab_size, k), -1, dtype=np.int32)  # (V, K)

    def update(self, tokens: np.ndarray, logits: torch.Tensor) -> None:
        """Record the model's top-k after each of `tokens` (N,) from its logits (N, V)."""
        top = torch.topk(logits, self.k, dim=-1).indices  # (N, K)
        self.table[np.asarray(tokens, dtype=np.int64)] = top.to(torch.int32).cpu().numpy()

    def candidates(
        self,
        root: int,
        max_paths: int = 16,
        max_depth: int = 6,
        rank_weights: tuple[float, ...] = (1.0, 0.3, 0.15, 0.08),
    ) -> Candidates | None:
        """Best-first paths through the table from `root`: a path's weight is the product of its
        ranks' weights, so the tree is wide near the root and follows top-1 chains deeper."""
        first = self.table[root]
        if first[0] < 0:
            return None
        heap: list[tuple[float, tuple[int, ...]]] = [(-1.0, ())]
        leaves: list[tuple[tuple[int, ...], float]] = []
        while heap and len(leaves) < max_paths:
            neg, path = heapq.heappop(heap)
            last = path[-1] if path else root
            row = self.table[last]
            grew = False
            if len(path) < max_depth:
                for rank, tok in enumerate(row[: len(rank_weights)].tolist()):
                    if tok < 0:
                        break
                    heapq.heappush(heap, (neg * rank_weights[rank], (*path, int(tok))))
                    grew = True
            if path and not grew:
                leaves.append((path, -neg))
        # Paths still open count as leaves too, best first, so the deepest top-1 chain is kept.
        while heap and len(leaves) < max_paths:
            neg, path = heapq.heappop(heap)
            if path:
                leaves.append((path, -neg))
        if not leaves:
            return None
        return Candidates("recycle", 1, leaves, len(leaves))
