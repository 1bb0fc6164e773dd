"""Speculative-decoding evaluation (never imported by `lodestar serve`).

specdec      `lodestar eval specdec`: plain vs speculative greedy on the same prompts, same process
workloads    the benchmark workloads: code completion over the stdlib, SQuAD RAG
"""
