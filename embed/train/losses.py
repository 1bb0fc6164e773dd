"""Losses of the embedding trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """queries (B, D), docs (N, D) with N >= B and docs[i] the positive of queries[i]; every other
    doc (the other positives and any hard negatives after them) is a negative. Cosine similarity
    (inputs are normalised here). -> (loss, share of queries whose positive ranks first)."""
    q = F.normalize(queries, dim=-1)
    d = F.normalize(docs, dim=-1)
    logits = q @ d.T / temperature  # (B, N)
    target = torch.arange(q.shape[0], device=q.device)
    acc = float((logits.argmax(-1) == target).float().mean())
    return F.cross_entropy(logits, target), acc


def cosent(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022): for every two pairs where gold says (i) > (j), penalise cos(j) > cos(i):
    log(1 + sum exp(scale * (cos_j - cos_i))). a, b (B, D); scores (B,)."""
    cos = F.cosine_similarity(a, b, dim=-1) * scale  # (B,)
    diff = cos[None, :] - cos[:, None]  # (B, B): diff[i, j] = cos_j - cos_i
    keep = scores[:, None] > scores[None, :]  # gold says pair i above pair j
    diff = diff.masked_fill(~keep, float("-inf")).flatten()
    return torch.logsumexp(torch.cat([torch.zeros(1, device=diff.device, dtype=diff.dtype), diff]), dim=0)


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser (Paria et al. 2020): sum over the vocabulary of the squared mean weight
    across the batch; pushes towards vectors that are sparse and use rare terms. weights (B, V)."""
    return (weights.abs().mean(dim=0) ** 2).sum()
