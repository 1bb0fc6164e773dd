"""Token choice for plain and speculative decoding: greedy, temperature + top-p sampling, and exact
verification of deterministic draft children (recursive rejection sampling, SpecInfer-style).

A draft child is a point mass q = 1[x = c]; accepting it with probability min(1, p(c) / q(c)) = p(c)
and otherwise continuing with the residual norm(max(0, p - q)) = p without c, renormalised, yields
exactly p over all children in turn, so the output distribution is the target's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def target_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(V,) logits -> (V,) float64 probabilities after temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)  # (V,)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each token
        sorted_p[before >= top_p] = 0.0  # keep the smallest prefix reaching top_p (>= 1 token)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        probs /= probs.sum()
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator).item())


def verify_children(probs: torch.Tensor, children: Sequence[int], generator: torch.Generator) -> tuple[int | None, int]:
    """Recursive rejection sampling over distinct draft tokens `children` under target `probs` (V,).

    -> (index into children of the accepted one, its token) or (None, a token from the residual).
    """
    residual = probs
    for i, tok in enumerate(children):
        p = float(residual[tok])
        if p > 0.0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < p:
            return i, int(tok)
        if p > 0.0:
            residual = residual.clone()
            residual[tok] = 0.0
            mass = float(residual.sum())
            if mass <= 0.0:  # numerically all mass was on rejected children: cannot happen exactly
                residual = probs
                break
            residual /= mass
    return None, sample(residual, generator)
