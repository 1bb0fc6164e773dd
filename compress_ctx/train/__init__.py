"""Training the compressors' LoRA adapters, RECOMP-style (never imported by `lodestar serve`).

extractive   `lodestar train compressor`: the entry point for both kinds; the extractive trainer
             (reader-labelled sentences, InfoNCE) and the start every trainer shares
abstractive  `--kind abstractive`: the backbone's own summaries filtered by the reader, causal-LM loss
"""
