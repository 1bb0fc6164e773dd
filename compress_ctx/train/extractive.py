"""Train the extractive compressor (`lodestar train compressor --kind extractive`), RECOMP-style.

Labels: for each (question, gold answer, top-k retrieved passages), the candidate sentences are
those the zero-shot scorer would consider (best lexical coverage); the positive is the sentence
that, prepended as the context, most raises the reader LM's log-likelihood of the gold answer, and
the others are negatives. Labelling is the expensive part, so labels are appended to
`labels.jsonl` as they are made and reused on a rerun.

Model: a peft LoRA adapter on the embedding backbone, trained with InfoNCE (query vs its positive,
its own negatives and the other queries' positives in the batch), pooled exactly as the embedding
engine pools the chosen mode, so the saved folder works as `EmbedOptions(adapter=...)`.

Checkpoints (adapter + optimiser + step + RNG) are written atomically every `checkpoint_every`
steps and resumed from; the best adapter on the dev split is kept in `adapter/`; training stops
early after `patience` evaluations without a better dev loss. A card (card.json, README.md)
records the base model, data, settings, steps and dev figures.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.backbone.train.loop import LoopConfig, fit, lora_model, seed_everything
from lodestar.compress_ctx.eval.qa import read_qa, retrieve, split_questions
from lodestar.compress_ctx.eval.reader import Reader
from lodestar.compress_ctx.lexical import coverage_scores
from lodestar.compress_ctx.sentences import split_sentences
from lodestar.embed.train.data import split
from lodestar.embed.train.encoder import TrainEncoder
from lodestar.errors import InvalidInput

TRAINABLE_MODES = ("mean", "last", "prompteol", "echo")  # causal: the scorer serves in these modes
KINDS = ("extractive", "abstractive")


@dataclass(frozen=True)
class TrainConfig:
    qa_file: Path
    corpus: Path  # BEIR folder the passages are retrieved from
    out_dir: Path
    kind: str = "extractive"  # extractive (scorer adapter) | abstractive (summariser adapter)
    questions: int = 200  # labelled questions in all (train + dev)
    dev_fraction: float = 0.2
    k: int = 5
    max_candidates: int = 8  # sentences labelled per question (best lexical coverage first)
    mode: str = "prompteol"
    prompt: str = ""
    instruction: str = ""
    max_tokens: int = 128  # per embedded text while training
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 2e-4
    epochs: int = 3
    batch_questions: int = 4
    temperature: float = 0.05
    eval_every: int = 10  # steps
    checkpoint_every: int = 10
    patience: int = 3  # evaluations without a better dev loss
    seed: int = 0
    resume: bool = True
    progress: bool = True
    summary_tokens: int = 64  # abstractive: summary length bound while labelling
    min_gain: float = 0.1  # abstractive: a target must beat closed-book by this (log-likelihood per token)


@dataclass
class Example:
    question: str
    answer: str
    positive: str
    negatives: list[str]
    gain: float  # positive's answer log-likelihood minus the closed-book one (per token)


# --- labels -------------------------------------------------------------------------------------


def label_examples(
    backbone: Backbone, config: TrainConfig, path: Path | None = None, progress: bool = True
) -> list[Example]:
    """RECOMP labels for `config.questions` questions; appended to (and resumed from) `path`."""
    done: dict[str, Example] = {}
    if path is not None and path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    key = o.pop("id")
                    done[key] = Example(**o)
    items, _ = split_questions(read_qa(config.qa_file), config.questions, 0, config.seed)
    todo = [q for q in items if q.id not in done]
    if todo:
        passages = retrieve(None, config.corpus, [q.question for q in todo], config.k, "bm25", config.mode)
        reader = Reader(backbone)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="label sentences", unit="q")
        out = open(path, "a", encoding="utf-8") if path is not None else None
        try:
            for q, ps in zip(todo, passages):
                sents = list(dict.fromkeys(s.text for p in ps for s in split_sentences(p)))
                if len(sents) >= 2:
                    lex = coverage_scores(q.question, sents)
                    cands = [sents[i] for i in np.argsort(-lex, kind="stable")[: config.max_candidates]]
                    answer = q.answers[0]
                    scores = reader.answer_logprob(q.question, ["", *cands], answer)  # closed book first
                    best = int(np.argmax(scores[1:]))
                    ex = Example(
                        q.question,
                        answer,
                        cands[best],
                        [c for i, c in enumerate(cands) if i != best],
                        float(scores[1 + best] - scores[0]),
                    )
                    done[q.id] = ex
                    if out is not None:
                        out.write(json.dumps({"id": q.id, **asdict(ex)}, ensure_ascii=False) + "\n")
                        out.flush()
                if bar:
                    bar.update(1)
        finally:
            if out is not None:
                out.close()
            if bar:
                bar.close()
    return [done[q.id] for q in items if q.id in done]


def info_nce(encoder: TrainEncoder, batch: list[Example], temperature: float) -> tuple[torch.Tensor, float]:
    """Mean InfoNCE over the batch, and the share of queries whose positive ranks first."""
    texts: list[str] = []
    owners: list[tuple[int, int]] = []  # per example: (index of its positive, end of its negatives)
    for ex in batch:
        start = len(texts)
        texts += [ex.positive, *ex.negatives]
        owners.append((start, len(texts)))
    cand = encoder.dense(texts)  # (C, H)
    queries = encoder.dense([ex.question for ex in batch])  # (B, H)
    positives = torch.tensor([s for s, _ in owners])
    losses, hits = [], 0
    for b, (s, e) in enumerate(owners):
        others = positives[positives != s]  # the other queries' positives: in-batch negatives
        idx = torch.cat([torch.arange(s, e), others])  # own positive first
        logits = cand[idx] @ queries[b] / temperature  # (n,)
        losses.append(torch.nn.functional.cross_entropy(logits[None, :], torch.zeros(1, dtype=torch.long)))
        hits += int(int(logits.argmax()) == 0)
    return torch.stack(losses).mean(), hits / len(batch)


# --- training ----------------------------------------------------------------------------------


@torch.no_grad()
def _dev(encoder: TrainEncoder, dev: list[Example], config: TrainConfig) -> tuple[float, float]:
    losses, accs = [], []
    for i in range(0, len(dev), config.batch_questions):
        loss, acc = info_nce(encoder, dev[i : i + config.batch_questions], config.temperature)
        losses.append(float(loss))
        accs.append(acc)
    return float(np.mean(losses)), float(np.mean(accs))


def start_run(
    backbone: Backbone, config: Any, label: Any, labels_file: str
) -> tuple[Path, list[Any], list[Any], Any, Any]:
    """What both compressor trainers begin with: the out folder, the seed, labelled examples (cached in
    `labels_file`, resumable), the train/dev split, a LoRA model and its optimizer."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    examples = label(backbone, config, out / labels_file, config.progress)
    if len(examples) < 4:
        raise InvalidInput(f"only {len(examples)} questions could be labelled; need at least 4 (raise questions)")
    train, dev = split(examples, config.dev_fraction, config.seed, max_dev=len(examples))
    peft_model = lora_model(
        backbone.model, config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
    return out, train, dev, peft_model, optimizer


def train_compressor(backbone: Backbone, config: TrainConfig) -> dict[str, Any]:
    """Label, train, keep the best adapter on dev, write the card; returns the card.

    `backbone` should be loaded for training alone (fp32 preferred): LoRA layers are injected into
    its model, which then serves nothing else."""
    if config.kind not in KINDS:
        raise InvalidInput(f"unknown compressor kind {config.kind!r}: valid are {', '.join(KINDS)}")
    if not 0.0 < config.dev_fraction < 1.0:
        raise InvalidInput(f"dev_fraction must be in (0, 1); got {config.dev_fraction}")
    if config.kind == "abstractive":
        from lodestar.compress_ctx.train.abstractive import train_abstractive

        return train_abstractive(backbone, config)
    t0 = time.perf_counter()
    out, train, dev, peft_model, optimizer = start_run(backbone, config, label_examples, "labels.jsonl")
    if config.mode not in TRAINABLE_MODES:
        raise InvalidInput(f"mode {config.mode!r} cannot be trained here: valid are {', '.join(TRAINABLE_MODES)}")
    encoder = TrainEncoder(
        peft_model.base_model.model,
        backbone.tokenizer,
        config.mode,
        config.prompt,
        config.instruction,
        config.max_tokens,
    )
    steps_per_epoch = math.ceil(len(train) / config.batch_questions)
    total = steps_per_epoch * config.epochs

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        epoch, i = divmod(step, steps_per_epoch)
        perm = list(range(len(train)))
        random.Random(config.seed + epoch).shuffle(perm)  # an epoch's order survives a resume
        batch = [train[j] for j in perm[i * config.batch_questions : (i + 1) * config.batch_questions]]
        loss, acc = info_nce(encoder, batch, config.temperature)
        return loss, {"train_acc": acc}

    def dev_loss() -> dict[str, float]:
        loss, acc = _dev(encoder, dev, config)
        return {"loss": loss, "acc": acc}

    result = fit(
        peft_model,
        optimizer,
        step_loss,
        dev_loss,
        LoopConfig(
            out_dir=out,
            steps=total,
            eval_every=config.eval_every,
            checkpoint_every=config.checkpoint_every,
            patience=config.patience,
            resume=config.resume,
            progress=config.progress,
            desc="train compressor",
            max_grad_norm=0.0,
        ),
    )
    state, stopped_early, resumed_from = result.state, result.stopped_early, result.resumed_from

    devs = [h for h in state.history if "dev_loss" in h]
    trains = [h["train_loss"] for h in state.history if "train_loss" in h]
    window = max(1, min(steps_per_epoch, len(trains) // 2))
    card = {
        "kind": config.kind,
        "base_model": backbone.model_id,
        "torch_dtype": str(backbone.dtype).replace("torch.", ""),
        "objective": "RECOMP extractive: positive = sentence that most raises the reader's gold-answer "
        "log-likelihood; InfoNCE with own and in-batch negatives",
        "data": {
            "qa_file": str(config.qa_file),
            "corpus": str(config.corpus),
            "train_questions": len(train),
            "dev_questions": len(dev),
            "k": config.k,
            "candidates_per_question": config.max_candidates,
            "mean_positive_gain": round(float(np.mean([e.gain for e in train + dev])), 4),
        },
        "embedding": {"mode": config.mode, "prompt": config.prompt, "instruction": config.instruction},
        "lora": {
            "r": config.lora_r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": list(config.target_modules),
        },
        "training": {
            "steps": state.step,
            "planned_steps": total,
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_questions": config.batch_questions,
            "temperature": config.temperature,
            "seed": config.seed,
            "stopped_early": stopped_early,
            "resumed_from_step": resumed_from,
            "train_loss_first": round(float(np.mean(trains[:window])), 4) if trains else None,
            "train_loss_last": round(float(np.mean(trains[-window:])), 4) if trains else None,
        },
        "dev": {
            "loss_before": devs[0]["dev_loss"] if devs else None,
            "acc_before": devs[0]["dev_acc"] if devs else None,
            "best_loss": state.best_dev,
            "acc_at_best": next((h["dev_acc"] for h in devs if h["dev_loss"] == state.best_dev), None),
        },
        "adapter": str(out / "adapter"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(_card_markdown(card))
    return card


def _card_markdown(card: dict[str, Any]) -> str:
    d, t, dev = card["data"], card["training"], card["dev"]
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    return (
        f"# Extractive compressor adapter\n\n"
        f"LoRA adapter for `{card['base_model']}` ({card['torch_dtype']}), embedding mode "
        f"`{card['embedding']['mode']}`. Use it as `EmbedOptions(mode='{card['embedding']['mode']}', adapter=<this folder>/adapter)`.\n\n"
        f"Objective: {card['objective']}.\n\n"
        f"| data | value |\n|---|---|\n| QA file | `{d['qa_file']}` |\n| corpus | `{d['corpus']}` |\n"
        f"| train / dev questions | {d['train_questions']} / {d['dev_questions']} |\n"
        f"| candidates per question | {d['candidates_per_question']} (top-{d['k']} BM25 passages) |\n\n"
        f"| training | value |\n|---|---|\n| steps | {t['steps']} of {t['planned_steps']} (early stop: {t['stopped_early']}) |\n"
        f"| lr, batch, temperature | {t['lr']}, {t['batch_questions']} questions, {t['temperature']} |\n| seed | {t['seed']} |\n\n"
        f"| dev | before | best |\n|---|---|---|\n| InfoNCE loss | {fmt(dev['loss_before'])} | {fmt(dev['best_loss'])} |\n"
        f"| positive ranked first | {fmt(dev['acc_before'])} | {fmt(dev['acc_at_best'])} |\n"
    )
