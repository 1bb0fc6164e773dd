"""`lodestar train bidirectional`: LLM2Vec (BehnamGhader et al. 2024) for any decoder, with peft LoRA.

Stages, each continuing the same LoRA weights (one adapter serves the result):
  mntp        masked next-token prediction with the causal mask removed: a share of the tokens is
              replaced by a mask token and each is predicted from the hidden state of the position
              before it (the model keeps its next-token habit while learning to read both ways)
  simcse      unsupervised SimCSE: a sentence twice through the encoder with dropout; the two views
              are positives, the batch's other sentences negatives (InfoNCE)
  supervised  scored pairs (STS TSV) with CoSENT, and/or (query, positive, negatives) triplets with
              InfoNCE over in-batch and hard negatives
Early stopping: on dev pairs' Spearman when scored dev pairs exist (given, or held out from the
pairs), else on the stage's own loss over held-out sentences.
Serve the result with mode=bidirectional and adapter=<out>/adapter (or its name under adapters/).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lodestar.backbone import Backbone
from lodestar.backbone.train.loop import seed_everything
from lodestar.embed.forward import attention_mask
from lodestar.embed.train.common import RunSettings, Stages, attention_dropout, batches, pair_spearman
from lodestar.embed.train.data import Pair, Triplet, read_pairs, read_sentences, read_triplets, split
from lodestar.embed.train.encoder import TrainEncoder
from lodestar.embed.train.losses import cosent, info_nce
from lodestar.errors import InvalidInput

STAGES = ("mntp", "simcse", "supervised")


@dataclass(frozen=True)
class BidirectionalConfig:
    run: RunSettings
    corpus: tuple[Path, ...] = ()  # sentences for mntp / simcse
    pairs: Path | None = None  # scored pairs for the supervised stage (CoSENT)
    triplets: Path | None = None  # triplets for the supervised stage (InfoNCE)
    dev_pairs: Path | None = None  # scored pairs for early stopping; default: held out from `pairs`
    stages: tuple[str, ...] = ()  # () = mntp, simcse when a corpus is given, + supervised with pairs/triplets
    mode: str = "bidirectional"
    max_tokens: int = 64
    max_sentences: int = 20000
    dev_fraction: float = 0.1
    mntp_steps: int = 300
    mntp_batch: int = 16
    mntp_lr: float = 2e-4
    mask_ratio: float = 0.2
    simcse_steps: int = 300
    simcse_batch: int = 32
    simcse_lr: float = 1e-4
    simcse_dropout: float = 0.1
    supervised_steps: int = 400
    supervised_batch: int = 32
    supervised_lr: float = 1e-4
    temperature: float = 0.05
    cosent_scale: float = 20.0
    init_adapter: Path | None = None  # start from this adapter (e.g. continue an earlier run)

    def planned(self) -> tuple[str, ...]:
        if self.stages:
            bad = [s for s in self.stages if s not in STAGES]
            if bad:
                raise InvalidInput(f"unknown stage(s) {bad}: valid are {', '.join(STAGES)}")
            return self.stages
        out = ("mntp", "simcse") if self.corpus else ()
        return out + (("supervised",) if self.pairs or self.triplets else ())


def mask_token_id(tokenizer: Any) -> int:
    """LLM2Vec masks with '_' when the tokenizer has no mask token."""
    for tok in (getattr(tokenizer, "mask_token", None), "_"):
        if tok:
            ids = tokenizer(tok, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                return int(ids[0])
    return int(tokenizer.unk_token_id or 0)


def mntp_loss(enc: TrainEncoder, texts: list[str], ratio: float, mask_id: int, gen: random.Random) -> torch.Tensor:
    """Masked next-token prediction, bidirectional: masked token i predicted from position i - 1."""
    items = enc.encode(texts)
    B, T = len(items), max(len(e) for e in items)
    ids = torch.full((B, T), enc.pad, dtype=torch.long)
    masked_ids = ids.clone()
    targets: list[tuple[int, int, int]] = []  # (row, position, original token)
    for i, e in enumerate(items):
        row = list(e.ids)
        start = e.pool_start  # the text starts here (prefix and instruction are never masked)
        picks = [p for p in range(max(1, start), len(row)) if gen.random() < ratio]
        if not picks and len(row) > max(1, start):
            picks = [gen.randrange(max(1, start), len(row))]
        for p in picks:
            targets.append((i, p, row[p]))
        ids[i, : len(row)] = torch.tensor(row)
        for p in picks:
            row[p] = mask_id
        masked_ids[i, : len(row)] = torch.tensor(row)
    dev = enc.device
    lengths = torch.tensor([len(e) for e in items], device=dev)
    mask = attention_mask(lengths, T, True)
    positions = torch.arange(T, device=dev)[None, :].expand(B, T)
    hidden = enc.model.get_decoder()(
        input_ids=masked_ids.to(dev), attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state  # (B, T, H)
    rows = torch.tensor([r for r, _, _ in targets], device=dev)
    before = torch.tensor([p - 1 for _, p, _ in targets], device=dev)
    gold = torch.tensor([t for _, _, t in targets], device=dev)
    logits = enc.model.get_output_embeddings()(hidden[rows, before]).float()  # (M, V)
    return F.cross_entropy(logits, gold)


def simcse_loss(enc: TrainEncoder, texts: list[str], temperature: float) -> tuple[torch.Tensor, float]:
    """Two dropout views of each sentence: positives; the other sentences: negatives."""
    return info_nce(enc.dense(texts), enc.dense(texts), temperature)


def supervised_loss(
    enc: TrainEncoder, pairs: list[Pair], triplets: list[Triplet], cfg: BidirectionalConfig
) -> torch.Tensor:
    losses = []
    if pairs:
        a, b = enc.dense([p.a for p in pairs]), enc.dense([p.b for p in pairs])
        scores = torch.tensor([p.score for p in pairs], device=a.device)
        losses.append(cosent(a, b, scores, cfg.cosent_scale))
    if triplets:
        q = enc.dense([t.query for t in triplets])
        docs = [t.positive for t in triplets] + [n for t in triplets for n in t.negatives]
        losses.append(info_nce(q, enc.dense(docs), cfg.temperature)[0])
    return torch.stack(losses).sum()


def train_bidirectional(backbone: Backbone, cfg: BidirectionalConfig, command: str = "") -> dict[str, Any]:
    """Run the planned stages; returns the card (also written to <out>/card.json)."""
    run = cfg.run
    seed_everything(run.seed)
    planned = cfg.planned()
    if not planned:
        raise InvalidInput("nothing to train: give a corpus (mntp, simcse) and/or pairs/triplets (supervised)")
    if {"mntp", "simcse"} & set(planned) and not cfg.corpus:
        raise InvalidInput("the mntp and simcse stages need --corpus (text files, jsonl or BEIR folders)")
    if "supervised" in planned and not (cfg.pairs or cfg.triplets):
        raise InvalidInput("the supervised stage needs --pairs (STS TSV) and/or --triplets (jsonl)")
    sentences = read_sentences(cfg.corpus, cfg.max_sentences, seed=run.seed) if cfg.corpus else []
    train_sents, dev_sents = split(sentences, cfg.dev_fraction, run.seed, 256) if sentences else ([], [])
    pairs = read_pairs(cfg.pairs) if cfg.pairs else []
    dev_pairs = read_pairs(cfg.dev_pairs) if cfg.dev_pairs else []
    if pairs and not dev_pairs:
        pairs, dev_pairs = split(pairs, cfg.dev_fraction, run.seed)
    triplets = read_triplets(cfg.triplets) if cfg.triplets else []
    stages = Stages(backbone, run)
    if cfg.init_adapter is not None:
        stages.last_adapter = Path(cfg.init_adapter)
    tok = backbone.tokenizer
    mask_id = mask_token_id(tok)

    def encoder() -> TrainEncoder:
        return TrainEncoder(stages.model, tok, cfg.mode, max_tokens=cfg.max_tokens)

    def dev_spearman(enc: TrainEncoder) -> Callable[[], dict[str, float]]:
        return lambda: {"loss": -pair_spearman(enc, dev_pairs), "spearman": pair_spearman(enc, dev_pairs)}

    if "mntp" in planned:

        def make_mntp() -> Any:
            enc = encoder()

            def step(s: int) -> tuple[torch.Tensor, dict[str, float]]:
                gen = random.Random(run.seed * 1_000_003 + s)
                return mntp_loss(
                    enc, batches(train_sents, cfg.mntp_batch, s, run.seed), cfg.mask_ratio, mask_id, gen
                ), {}

            def dev() -> dict[str, float]:
                gen = random.Random(run.seed)  # the same masks every evaluation
                chunks = [dev_sents[i : i + cfg.mntp_batch] for i in range(0, len(dev_sents), cfg.mntp_batch)]
                return {
                    "loss": float(
                        sum(float(mntp_loss(enc, c, cfg.mask_ratio, mask_id, gen)) for c in chunks) / len(chunks)
                    )
                }

            return step, dev

        stages.stage(
            "mntp",
            cfg.mntp_steps,
            cfg.mntp_lr,
            make_mntp,
            {"sentences": len(train_sents), "mask_ratio": cfg.mask_ratio, "batch": cfg.mntp_batch},
        )

    if "simcse" in planned:

        def make_simcse() -> Any:
            enc = encoder()

            def step(s: int) -> tuple[torch.Tensor, dict[str, float]]:
                with attention_dropout(stages.model, cfg.simcse_dropout):
                    loss, acc = simcse_loss(enc, batches(train_sents, cfg.simcse_batch, s, run.seed), cfg.temperature)
                return loss, {"train_acc": acc}

            def dev() -> dict[str, float]:
                if dev_pairs:
                    return dev_spearman(enc)()
                torch.manual_seed(run.seed)
                stages.peft_model.train()  # the views differ only through dropout
                with attention_dropout(stages.model, cfg.simcse_dropout):
                    loss, acc = simcse_loss(enc, dev_sents[: cfg.simcse_batch * 4], cfg.temperature)
                return {"loss": float(loss), "acc": acc}

            return step, dev

        stages.stage(
            "simcse",
            cfg.simcse_steps,
            cfg.simcse_lr,
            make_simcse,
            {
                "sentences": len(train_sents),
                "batch": cfg.simcse_batch,
                "dropout": cfg.simcse_dropout,
                "temperature": cfg.temperature,
            },
        )

    if "supervised" in planned:

        def make_supervised() -> Any:
            enc = encoder()
            n_t = max(1, cfg.supervised_batch // 4)

            def step(s: int) -> tuple[torch.Tensor, dict[str, float]]:
                bp = batches(pairs, cfg.supervised_batch, s, run.seed) if pairs else []
                bt = batches(triplets, n_t, s, run.seed + 1) if triplets else []
                return supervised_loss(enc, bp, bt, cfg), {}

            def dev() -> dict[str, float]:
                if dev_pairs:
                    return dev_spearman(enc)()
                _, held = split(triplets, cfg.dev_fraction, run.seed, 128)
                return {"loss": float(supervised_loss(enc, [], held, cfg))}

            return step, dev

        stages.stage(
            "supervised",
            cfg.supervised_steps,
            cfg.supervised_lr,
            make_supervised,
            {
                "pairs": len(pairs),
                "triplets": len(triplets),
                "batch": cfg.supervised_batch,
                "loss": ("cosent" if pairs else "") + ("+infonce" if triplets else ""),
            },
        )

    return stages.finish(
        "bidirectional",
        {
            "mode": cfg.mode,
            "data": {
                "corpus": [str(p) for p in cfg.corpus],
                "pairs": str(cfg.pairs or ""),
                "triplets": str(cfg.triplets or ""),
                "dev_pairs": str(cfg.dev_pairs or ("held out from pairs" if cfg.pairs else "")),
                "dev_pairs_count": len(dev_pairs),
            },
            "use": f"mode={cfg.mode}, adapter=<this folder>/adapter",
        },
        command,
    )
