"""Embedding engine: pooling modes over a decoder LLM, output shaping, dynamic batching.

Kept import-light: `lodestar.embed.output` is used by the client without torch being loaded.
"""
