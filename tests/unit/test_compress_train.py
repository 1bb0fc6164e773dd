"""Training the extractive compressor: a tiny smoke run (loss goes down, the adapter saves, loads in
the embedding engine, and training resumes from its checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tinymodel import build_tiny  # noqa: E402  (tests/ is on sys.path)

from lodestar.compress_ctx.train.extractive import TrainConfig, train_compressor
from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.train.encoder import TrainEncoder
from lodestar.embed.types import EmbedOptions

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compress"
TEXTS = ["The Normans were in Normandy.", "Complexity theory classifies problems."]


def test_encoder_pools_like_the_engine(tokenizer) -> None:  # type: ignore[no-untyped-def]
    bb = build_tiny(tokenizer)
    engine = EmbeddingEngine(bb)
    try:
        for mode in ("mean", "prompteol", "echo", "bidirectional"):
            served = engine.embed(TEXTS, EmbedOptions(mode=mode)).vectors
            with torch.no_grad():
                trained = TrainEncoder(bb.model, tokenizer, mode, "", "", 128).dense(TEXTS).numpy()
            assert np.allclose((served * trained).sum(1), 1.0, atol=1e-4)
    finally:
        engine.close()


def test_train_smoke_loss_drops_adapter_loads_and_resumes(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "compressor"
    cfg = TrainConfig(
        qa_file=FIXTURES / "qa.jsonl",
        corpus=FIXTURES / "beir",
        out_dir=out,
        questions=6,
        dev_fraction=0.34,
        k=2,
        max_candidates=3,
        mode="mean",
        max_tokens=48,
        lora_r=4,
        lr=2e-3,
        epochs=4,
        batch_questions=2,
        temperature=0.1,
        eval_every=4,
        checkpoint_every=4,
        patience=100,
        progress=False,
    )
    card = train_compressor(build_tiny(tokenizer), cfg)  # a fresh model: training injects LoRA into it
    t = card["training"]
    assert t["steps"] == t["planned_steps"] == 8 and t["resumed_from_step"] == 0
    assert t["train_loss_last"] < t["train_loss_first"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "README.md").is_file()
    assert json.loads((out / "card.json").read_text())["base_model"] == "tiny-llama"
    labels = (out / "labels.jsonl").read_text().splitlines()
    assert len(labels) == 6

    bb = build_tiny(tokenizer)  # the same base weights (seeded)
    engine = EmbeddingEngine(bb)
    try:
        base = engine.embed(TEXTS, EmbedOptions(mode="mean")).vectors
        best = engine.embed(TEXTS, EmbedOptions(mode="mean", adapter=str(out / "adapter"))).vectors
        assert best.shape == base.shape  # the best-on-dev adapter (may be the untrained start here)
        last = engine.embed(TEXTS, EmbedOptions(mode="mean", adapter=str(out / "checkpoint" / "adapter"))).vectors
        assert not np.allclose(last, base, atol=1e-4)  # the trained weights change the vectors
    finally:
        engine.close()

    more = train_compressor(build_tiny(tokenizer), TrainConfig(**{**cfg.__dict__, "epochs": 5}))
    assert more["training"]["resumed_from_step"] == 8 and more["training"]["steps"] == 10
    assert (out / "labels.jsonl").read_text().splitlines() == labels  # labels reused


def test_abstractive_train_smoke_labels_targets_and_adapter_serves(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lodestar.compress_ctx.abstractive import NOTHING
    from lodestar.compress_ctx.engine import CompressionEngine

    out = tmp_path / "abstractive"
    cfg = TrainConfig(
        qa_file=FIXTURES / "qa.jsonl",
        corpus=FIXTURES / "beir",
        out_dir=out,
        kind="abstractive",
        questions=6,
        dev_fraction=0.34,
        k=2,
        lora_r=4,
        lr=2e-3,
        epochs=3,
        batch_questions=2,
        eval_every=2,
        checkpoint_every=2,
        patience=100,
        progress=False,
        summary_tokens=16,
        min_gain=0.0,
    )
    card = train_compressor(build_tiny(tokenizer), cfg)
    t = card["training"]
    assert card["kind"] == "abstractive" and t["steps"] == t["planned_steps"] == 6
    assert t["train_loss_last"] < t["train_loss_first"]  # the targets are being learnt
    rows = [json.loads(line) for line in (out / "summaries.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(card["data"]["targets"].values()) == 6
    assert all(r["target"] == NOTHING or r["source"] in ("zero-shot", "extractive") for r in rows)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "README.md").is_file()

    bb = build_tiny(tokenizer)
    embedder = EmbeddingEngine(bb)
    try:
        engine = CompressionEngine(bb, embedder)
        passages = [json.loads(line)["text"] for line in (FIXTURES / "beir" / "corpus.jsonl").read_text().splitlines()][
            :2
        ]
        res = engine.compress(
            "Who were the Normans?",
            passages,
            "abstractive",
            max_new_tokens=8,
            adapter=str(out / "checkpoint" / "adapter"),
        )
        assert res.method == "abstractive" and res.tokens_after <= 12
    finally:
        embedder.close()
