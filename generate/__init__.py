"""Retrieval-augmented speculative decoding: token datastore, draft trees, lossless verification.

engine.GenerationEngine     what a server holds: one decoder, named datastores, a concurrency cap
decoder.SpeculativeDecoder  plain and speculative decoding (greedy lossless, exact speculative sampling)
datastore.Datastore         suffix-array token datastore on disk (memory-mapped, verified, incremental)
drafter / tree / ngram      draft sources fused into one token tree, pruned by expected acceptance
eval/                       `lodestar eval specdec` and the benchmark workloads
types                       request/result dataclasses (no torch: the client uses them too)

Submodules are imported where used, so the client's `lodestar.generate.types` pulls in no torch.
"""
