"""Compression quality evaluation (never imported by `lodestar serve`).

qa           `lodestar eval compress`: retrieval -> compression -> reader EM/F1 on SQuAD-style QA
reader       the reader LM that answers from a (compressed) context; also scores answer likelihoods
selective    threshold calibration for selective augmentation (the engine applies a threshold)
"""
