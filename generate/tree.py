"""Draft token trees: fuse candidate continuations from several sources into one trie, score each node
by its estimated chance of being accepted, keep the best nodes under a budget, and flatten the result
for one verification forward (tokens, parents, depths, tree attention mask, position ids).

Scoring: a source s with confidence c_s (from its kind and match length) proposes continuations with
counts; the chance that the model's output runs through node v along that source is estimated as
    p_s(v) = c_s ** depth(v) * frac_s(v)
where frac_s(v) is the share of the source's continuation mass passing through v (counts give the
branching probabilities, c_s the per-token chance that the model follows the corpus at all).
Sources are fused by max, score(v) = max_s p_s(v) (default: sources often hold the same text, e.g.
a passage that is also in the prompt and in the datastore, so their agreement is no independent
evidence), or by noisy-OR, 1 - prod_s (1 - p_s(v)), which lets independent sources reinforce.
Both are monotone along a path (a child never outscores its parent), so best-first selection keeps
every chosen node's ancestors.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from lodestar.generate.costmodel import CostModel, OnlineCost
from lodestar.generate.types import Candidates


@dataclass(frozen=True)
class FlatTree:
    """A pruned draft tree in verification order; index 0 is the root (the pending, unverified token)."""

    tokens: np.ndarray  # (N,) int64
    parents: np.ndarray  # (N,) int64, -1 for the root; parents[i] < i
    depth: np.ndarray  # (N,) int64, root 0
    scores: np.ndarray  # (N,) float64, estimated acceptance probability (root 1)
    mask: np.ndarray  # (N, N) bool: row i sees column j iff j is an ancestor of i or i itself
    children: list[list[int]]  # per node, child indices, best score first

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def expected_tokens(self) -> float:
        """Expected tokens one verification yields: the root's bonus token plus each node's chance."""
        return float(self.scores.sum())

    def position_ids(self, prefix_len: int) -> np.ndarray:
        """(N,) positions: the root sits right after the cached prefix, each node at prefix_len + depth."""
        return prefix_len + self.depth

    def attention_mask(self, prefix_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(1, 1, N, prefix_len + N) bool: every node sees the whole cached prefix, its ancestors and itself."""
        n = self.size
        full = torch.ones(1, 1, n, prefix_len + n, dtype=torch.bool, device=device)  # (1, 1, N, P + N)
        full[0, 0, :, prefix_len:] = torch.from_numpy(self.mask).to(device)
        return full

    def path_to(self, node: int) -> list[int]:
        """Indices from the root to `node`, inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]


def match_confidence(base: float, match_len: int, half_life: float = 1.0) -> float:
    """Per-token chance of following a source whose context match has `match_len` tokens.

    Longer matches are more specific: base * (1 - 0.5 ** (match_len / half_life)).
    """
    return base * (1.0 - 0.5 ** (match_len / half_life))


FUSIONS = ("max", "noisy_or")


class DraftTree:
    """A trie of draft tokens under a root token, with per-node noisy-OR acceptance scores."""

    def __init__(self, root_token: int, fusion: str = "max") -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
        self.fusion = fusion
        self.tokens: list[int] = [int(root_token)]
        self.parent: list[int] = [-1]
        self.depth: list[int] = [0]
        self.children: list[dict[int, int]] = [{}]
        self.miss: list[float] = [0.0]  # 1 - score: prod_s (1 - p_s) or min_s (1 - p_s); root certain

    def __len__(self) -> int:
        return len(self.tokens)

    def _child(self, node: int, token: int) -> int:
        idx = self.children[node].get(token)
        if idx is None:
            idx = len(self.tokens)
            self.tokens.append(token)
            self.parent.append(node)
            self.depth.append(self.depth[node] + 1)
            self.children.append({})
            self.miss.append(1.0)
            self.children[node][token] = idx
        return idx

    def add(self, candidates: Candidates, confidence: float, max_depth: int = 64) -> None:
        """Merge one source's continuations (longest-prefix fusion) and fold its estimate into the scores."""
        if confidence <= 0 or not candidates.seqs:
            return
        total = sum(c for _, c in candidates.seqs)
        if total <= 0:
            return
        share: dict[int, float] = {}
        for seq, count in candidates.seqs:
            node = 0
            for tok in seq[:max_depth]:
                node = self._child(node, int(tok))
                share[node] = share.get(node, 0.0) + count / total
        for node, frac in share.items():
            p = min(1.0, confidence ** self.depth[node] * frac)
            if self.fusion == "noisy_or":
                self.miss[node] *= 1.0 - p
            else:
                self.miss[node] = min(self.miss[node], 1.0 - p)

    def score(self, node: int) -> float:
        return 1.0 - self.miss[node]

    def prune(
        self,
        max_nodes: int,
        min_score: float = 0.0,
        max_depth: int | None = None,
        cost: CostModel | OnlineCost | None = None,
        gain_scale: float = 1.0,
    ) -> FlatTree:
        """Best-first selection of up to `max_nodes` nodes (root excluded).

        Without a cost model: every node scoring at least `min_score`. With one: the prefix of the
        best-first order where (1 + expected accepted tokens) per unit of forward cost is highest,
        then topped up with the next best nodes (any score) to the padded forward length, since
        the forward is padded to that length anyway. `gain_scale` corrects the scores' sum by how
        well they predicted accepted tokens so far (observed / expected).
        """
        chosen = [0]
        new_index = {0: 0}
        heap: list[tuple[float, int, int]] = []  # (-score, depth, node): ties go to shallower nodes
        confident = 0  # chosen nodes (root excluded) scoring at least min_score

        def push_children(node: int) -> None:
            for child in self.children[node].values():
                if max_depth is None or self.depth[child] <= max_depth:
                    heapq.heappush(heap, (-self.score(child), self.depth[child], child))

        push_children(0)
        while heap and len(chosen) <= max_nodes:
            neg, _, node = heapq.heappop(heap)
            if -neg >= min_score:
                confident += 1
            elif cost is None or -neg <= 0.0:
                break
            new_index[node] = len(chosen)
            chosen.append(node)
            push_children(node)
        if cost is None:
            keep = confident + 1
        else:
            gain = np.cumsum([1.0] + [gain_scale * self.score(v) for v in chosen[1 : confident + 1]])  # (n,)
            value = [gain[i] / cost.envelope(i + 1) for i in range(confident + 1)]
            best = int(np.argmax(value)) + 1  # tokens in the forward: root + best prefix
            keep = min(len(chosen), cost.padded_length(best)) if best > 1 else 1
        chosen = chosen[:keep]  # a prefix of best-first order is a tree
        return flatten(
            tokens=[self.tokens[v] for v in chosen],
            parents=[new_index[self.parent[v]] if v else -1 for v in chosen],
            scores=[self.score(v) for v in chosen],
        )


def flatten(tokens: list[int], parents: list[int], scores: list[float] | None = None) -> FlatTree:
    """Build a FlatTree from parallel lists (parents[i] < i, parents[0] == -1)."""
    n = len(tokens)
    if n == 0 or parents[0] != -1:
        raise ValueError("a draft tree needs a root at index 0 with parent -1")
    par = np.asarray(parents, dtype=np.int64)  # (N,)
    depth = np.zeros(n, dtype=np.int64)  # (N,)
    mask = np.zeros((n, n), dtype=bool)  # (N, N)
    children: list[list[int]] = [[] for _ in range(n)]
    sc = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
    for i in range(n):
        p = int(par[i])
        if i:
            if not 0 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must come before their children")
            depth[i] = depth[p] + 1
            mask[i] = mask[p]
            children[p].append(i)
        mask[i, i] = True
    for kids in children:
        kids.sort(key=lambda c: -sc[c])
    return FlatTree(np.asarray(tokens, dtype=np.int64), par, depth, sc, mask, children)
