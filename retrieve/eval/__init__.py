"""Retrieval quality evaluation (never imported by `lodestar serve`).

beir         `lodestar eval beir`: index a BEIR corpus into a throwaway collection, nDCG@10 and recall@100
"""
