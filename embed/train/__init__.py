"""Training LoRA adapters for embeddings (peft), resumable, with early stopping on a dev set.

encoder      the serving engine's inputs, masks and pooling with gradients (dense and SPLADE sparse)
losses       InfoNCE (in-batch and hard negatives), CoSENT, FLOPS regulariser
data         sentences from text corpora, scored pairs (STS TSV), (query, positive, negatives) triplets
bidirectional  `lodestar train bidirectional`: LLM2Vec stages MNTP -> SimCSE -> supervised
sparse       `lodestar train sparse`: decoder SPLADE (echo input, max-pooled vocabulary weights)
adapt        `lodestar adapt`: synthetic queries written by the backbone for a user's corpus
"""
