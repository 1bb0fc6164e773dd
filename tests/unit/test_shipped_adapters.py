"""The adapters shipped under adapters/: small, carded (base model, data licence, the command that
reproduced them), offered by name, and they change what the bundled model computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lodestar.services.settings import SHIPPED_ADAPTERS

SHIPPED = ("bidirectional-stsb", "bidirectional-stsb-unsup", "sparse-squad", "sparse-squad-cranfield")


@pytest.mark.parametrize("name", SHIPPED)
def test_each_adapter_is_small_and_carded(name: str) -> None:
    folder = SHIPPED_ADAPTERS / name
    assert (folder / "adapter_config.json").is_file()
    weights = folder / "adapter_model.safetensors"
    assert 0 < weights.stat().st_size < 16 * 1024 * 1024  # a few MB
    card = json.loads((folder / "card.json").read_text())
    assert "SmolLM2-135M" in card["base_model"]
    assert card["data_licence"] and "train" in card["command"]
    assert card["stages"] and all(stage["steps"] > 0 and stage["dev"] for stage in card["stages"])
    assert (folder / "README.md").read_text().strip()


def test_served_by_name_and_change_the_embeddings(tmp_path: Path) -> None:
    from tinymodel import CACHE_DIR

    from lodestar.backbone import BackboneConfig, load_backbone
    from lodestar.embed.engine import EmbeddingEngine
    from lodestar.embed.types import EmbedOptions

    bb = load_backbone(BackboneConfig(cache_dir=CACHE_DIR, adapter_dirs=(SHIPPED_ADAPTERS,)))
    assert set(SHIPPED) <= set(bb.adapters.available())
    engine = EmbeddingEngine(bb)
    try:
        texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
        base = engine.embed(texts, EmbedOptions(mode="bidirectional")).vectors
        tuned = engine.embed(texts, EmbedOptions(mode="bidirectional", adapter="bidirectional-stsb")).vectors
        assert not np.allclose(base, tuned, atol=1e-3)
        # The supervised adapter ranks a paraphrase above an unrelated sentence.
        pair = engine.embed(
            ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell."],
            EmbedOptions(mode="bidirectional", adapter="bidirectional-stsb"),
        ).vectors
        assert pair[0] @ pair[1] > pair[0] @ pair[2]
        # The SPLADE adapter: sparser than the base LM head, and a query meets its passage's terms.
        docs = [
            "The pianist performed Chopin nocturnes at the concert hall.",
            "Stocks fell sharply after the announcement.",
        ]
        opts = dict(mode="echo", sparse=True, sparse_top_k=1024, with_dense=False)
        base_rows = engine.embed(docs, EmbedOptions(**opts)).sparse
        rows = engine.embed(docs, EmbedOptions(**opts, adapter="sparse-squad")).sparse
        assert all(len(t[0]) < len(b[0]) for t, b in zip(rows, base_rows))
        ((q_ids, q_w),) = engine.embed(
            ["who played Chopin at the concert"], EmbedOptions(**opts, adapter="sparse-squad")
        ).sparse

        def score(ids: np.ndarray, w: np.ndarray) -> float:
            common = dict(zip(q_ids.tolist(), q_w.tolist()))
            return float(sum(common.get(int(i), 0.0) * float(x) for i, x in zip(ids, w)))

        assert score(*rows[0]) > score(*rows[1])
    finally:
        engine.close()
