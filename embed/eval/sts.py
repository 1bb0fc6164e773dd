"""STS evaluation: Spearman correlation between cosine similarity and gold scores."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.embed.engine import EmbeddingEngine, EmbedOptions
from lodestar.errors import InvalidInput


def read_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """TSV with header `sentence1 sentence2 score` -> (s1, s2, scores)."""
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence1", "sentence2", "score"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{path}: header must hold sentence1, sentence2, score; missing {sorted(missing)}")
        for row in reader:
            s1.append(row["sentence1"])
            s2.append(row["sentence2"])
            scores.append(float(row["score"]))
    return s1, s2, np.asarray(scores)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def eval_sts(
    engine: EmbeddingEngine, path: Path, options: EmbedOptions, batch_size: int = 32, progress: bool = True
) -> dict[str, Any]:
    s1, s2, gold = read_sts(path)
    texts = list(dict.fromkeys(s1 + s2))  # embed each distinct sentence once
    start = time.perf_counter()
    vecs: list[np.ndarray] = []
    chunk = 256
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc=f"sts {options.mode or 'default'}", unit="text")
    for i in range(0, len(texts), chunk):
        res = engine.embed_direct(texts[i : i + chunk], options, batch_size=batch_size)
        vecs.append(res.vectors)
        if bar:
            bar.update(len(texts[i : i + chunk]))
    if bar:
        bar.close()
    elapsed = time.perf_counter() - start
    table = np.concatenate(vecs)
    table = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    index = {t: i for i, t in enumerate(texts)}
    a = table[[index[t] for t in s1]]
    b = table[[index[t] for t in s2]]
    cos = (a * b).sum(axis=1)
    return {
        "spearman": round(spearman(cos, gold), 4),
        "mode": options.mode or engine.config.default_mode,
        "pairs": len(gold),
        "texts": len(texts),
        "seconds": round(elapsed, 2),
        "model": engine.backbone.model_id,
        "torch_dtype": str(engine.backbone.dtype).replace("torch.", ""),
    }
