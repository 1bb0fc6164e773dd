"""RECOMP-style context compression: extractive and abstractive compressors, selective augmentation.

engine.CompressionEngine   validated entry point (compress, abstractive_many, info)
extractive                 sentence scoring (embedder cosine + lexical coverage) within a token budget
abstractive                query-focused summaries by the backbone, with a faithfulness report
sentences                  sentence splitter with exact character offsets
eval/                      `lodestar eval compress` (retrieval -> compression -> reader EM/F1), the reader,
                           threshold calibration for selective augmentation
train/                     `lodestar train compressor`: RECOMP labels + LoRA (extractive InfoNCE, abstractive LM)
types                      request/result dataclasses (no torch)
"""
