"""`lodestar train sparse`: a decoder SPLADE encoder (Echo-Mistral-SPLADE style) as a LoRA adapter.

Vocabulary weights are log(1 + relu(z - SPARSE_SHIFT)), z the LM-head logits standardised per
position (embed.forward.splade_weights), max-pooled over the mode's pooled span; with the echo mode
that is the second copy of the text, whose tokens have seen the whole text through causal attention.
Loss: InfoNCE over dot products of (query, positive, negatives) with in-batch negatives, plus the
FLOPS regulariser on queries and documents (ramped in quadratically), which drives the vectors sparse.
The dev split reports loss, positive-ranked-first and non-zeros per vector.
Serve with a learned-sparse collection (sparse='learned', sparse_adapter=<out>/adapter) or the
Embed RPC's sparse output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lodestar.backbone import Backbone
from lodestar.backbone.train.loop import seed_everything
from lodestar.embed.train.common import RunSettings, Stages, batches
from lodestar.embed.train.data import Triplet, read_triplets, split
from lodestar.embed.train.encoder import TrainEncoder
from lodestar.embed.train.losses import flops
from lodestar.errors import InvalidInput


@dataclass(frozen=True)
class SparseConfig:
    run: RunSettings
    triplets: Path | None = None
    mode: str = "echo"
    steps: int = 300
    batch: int = 8
    lr: float = 1e-4
    lambda_q: float = 5e-4
    lambda_d: float = 3e-4
    flops_warmup: int = 100  # steps over which the regulariser ramps up quadratically
    max_tokens: int = 128
    dev_fraction: float = 0.1
    init_adapter: Path | None = None  # continue from an adapter (e.g. `lodestar adapt` from a base one)


def sparse_loss(
    enc: TrainEncoder, batch: list[Triplet], lam_q: float, lam_d: float
) -> tuple[torch.Tensor, dict[str, float]]:
    q = enc.sparse([t.query for t in batch])  # (B, V)
    docs = [t.positive for t in batch] + [n for t in batch for n in t.negatives]
    d = enc.sparse(docs)  # (N, V)
    scores = q @ d.T  # (B, N)
    target = torch.arange(len(batch), device=scores.device)
    rank = F.cross_entropy(scores, target)
    reg = lam_q * flops(q) + lam_d * flops(d)
    stats = {
        "rank_loss": float(rank.detach()),
        "q_nnz": float((q > 0).sum(1).float().mean()),
        "d_nnz": float((d > 0).sum(1).float().mean()),
        "acc": float((scores.argmax(1) == target).float().mean()),
    }
    return rank + reg, stats


def train_sparse(
    backbone: Backbone,
    cfg: SparseConfig,
    triplets: list[Triplet] | None = None,
    command: str = "",
    stage: str = "sparse",
    stages: Stages | None = None,
) -> dict[str, Any]:
    """Train (or continue) the SPLADE adapter; returns the card. `triplets` overrides cfg.triplets."""
    run = cfg.run
    seed_everything(run.seed)
    data = triplets if triplets is not None else (read_triplets(cfg.triplets) if cfg.triplets else [])
    if len(data) < 4:
        raise InvalidInput("train sparse needs --triplets (jsonl {query, positive, negatives}) with at least 4 lines")
    train, dev = split(data, cfg.dev_fraction, run.seed, 256)
    own = stages is None
    stages = stages or Stages(backbone, run)
    if cfg.init_adapter is not None and stages.last_adapter is None:
        stages.last_adapter = Path(cfg.init_adapter)

    def make() -> Any:
        enc = TrainEncoder(stages.model, backbone.tokenizer, cfg.mode, max_tokens=cfg.max_tokens)

        def step(s: int) -> tuple[torch.Tensor, dict[str, float]]:
            ramp = min(1.0, (s + 1) / max(1, cfg.flops_warmup)) ** 2
            return sparse_loss(enc, batches(train, cfg.batch, s, run.seed), ramp * cfg.lambda_q, ramp * cfg.lambda_d)

        def dev_loss() -> dict[str, float]:
            parts = [sparse_loss(enc, dev[i : i + cfg.batch], 0.0, 0.0) for i in range(0, len(dev), cfg.batch)]
            n = len(parts)
            return {
                "loss": sum(float(p[0]) for p in parts) / n,
                **{k: sum(p[1][k] for p in parts) / n for k in ("acc", "q_nnz", "d_nnz")},
            }

        return step, dev_loss

    stages.stage(
        stage,
        cfg.steps,
        cfg.lr,
        make,
        {
            "triplets": len(train),
            "batch": cfg.batch,
            "lambda_q": cfg.lambda_q,
            "lambda_d": cfg.lambda_d,
            "mode": cfg.mode,
        },
    )
    if not own:
        return {}
    return stages.finish(
        "sparse",
        {
            "mode": cfg.mode,
            "data": {"triplets": str(cfg.triplets or "given"), "train": len(train), "dev": len(dev)},
            "use": f"collection sparse='learned', sparse_mode='{cfg.mode}', sparse_adapter=<this folder>/adapter; "
            f"or Embed with mode={cfg.mode}, sparse on, adapter=<this folder>/adapter",
        },
        command,
    )
