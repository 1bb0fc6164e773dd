"""Embedding quality evaluation (never imported by `lodestar serve`).

sts          `lodestar eval sts`: Spearman correlation between cosine similarity and gold STS scores
"""
