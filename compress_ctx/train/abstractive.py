"""Train the abstractive compressor (`lodestar train compressor --kind abstractive`), RECOMP-style.

Labels: for each (question, gold answer, top-k retrieved passages) the candidates are the
backbone's own zero-shot summary and the best extractive sentences within the summary budget; the
reader LM scores the gold answer's log-likelihood with each as its context and with no context.
The best candidate becomes the target only when it beats closed-book by `min_gain`; otherwise the
target is the "nothing relevant" reply, so the tuned compressor learns when to return nothing
(selective augmentation). No teacher model: the data is the backbone's own output, filtered by
what helps the reader. Labels are appended to `summaries.jsonl` and reused on a rerun.

Model: a peft LoRA adapter trained with the causal-LM loss of the target reply given the
compressor's prompt (the same chat prompt and extractive pre-selection it sees when serving), so
the folder works as the `adapter` of an abstractive Compress request.
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
from lodestar.backbone.chat import chat_ids, stop_ids
from lodestar.backbone.train.loop import LoopConfig, fit
from lodestar.compress_ctx.abstractive import NOTHING, messages
from lodestar.compress_ctx.eval.qa import read_qa, retrieve, split_questions
from lodestar.compress_ctx.eval.reader import Reader


@dataclass
class SummaryExample:
    question: str
    answer: str
    view: list[str]  # what the compressor reads (its extractive pre-selection of the passages)
    target: str  # the reply it learns: a helpful summary, or NOTHING
    source: str  # "zero-shot" | "extractive" | "nothing"
    gain: float  # best candidate's answer log-likelihood minus closed-book (per token)


def label_summaries(backbone: Backbone, config: Any, path: Path | None, progress: bool) -> list[SummaryExample]:
    """RECOMP abstractive labels for `config.questions` questions; appended to / resumed from `path`."""
    from lodestar.compress_ctx.engine import CompressConfig, CompressionEngine
    from lodestar.embed.engine import EmbeddingEngine

    done: dict[str, SummaryExample] = {}
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                o = json.loads(line)
                done[o.pop("id")] = SummaryExample(**o)
    items, _ = split_questions(read_qa(config.qa_file), config.questions, 0, config.seed)
    todo = [q for q in items if q.id not in done]
    if todo:
        passages = retrieve(None, config.corpus, [q.question for q in todo], config.k, "bm25", "")
        embedder = EmbeddingEngine(backbone)
        engine = CompressionEngine(backbone, embedder, CompressConfig(summary_tokens=config.summary_tokens))
        reader = Reader(backbone)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="label summaries", unit="q")
        out = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        try:
            for start in range(0, len(todo), 4):
                qs, ps = todo[start : start + 4], passages[start : start + 4]
                views = []
                for q, p in zip(qs, ps):
                    pre = engine.extractive.compress(q.question, p, budget_tokens=engine.config.preselect_tokens)
                    views.append([pre.text] if pre.text else p)
                zero = engine.abstractive.compress_many(
                    [q.question for q in qs], ps, views=views, max_new_tokens=config.summary_tokens
                )
                for q, p, view, z in zip(qs, ps, views, zero):
                    ext = engine.extractive.compress(q.question, p, budget_tokens=config.summary_tokens).text
                    cands = [(c, name) for c, name in ((z.text, "zero-shot"), (ext, "extractive")) if c.strip()]
                    answer = q.answers[0]
                    scores = reader.answer_logprob(q.question, ["", *[c for c, _ in cands]], answer)
                    best = int(np.argmax(scores[1:])) if cands else -1
                    gain = float(scores[1 + best] - scores[0]) if cands else 0.0
                    if cands and gain > config.min_gain:
                        target, source = cands[best]
                    else:
                        target, source = NOTHING, "nothing"
                    ex = SummaryExample(q.question, answer, view, target, source, gain)
                    done[q.id] = ex
                    if out is not None:
                        out.write(json.dumps({"id": q.id, **asdict(ex)}, ensure_ascii=False) + "\n")
                        out.flush()
                if bar:
                    bar.update(len(qs))
        finally:
            if out is not None:
                out.close()
            if bar:
                bar.close()
            if todo:
                embedder.close()
    return [done[q.id] for q in items if q.id in done]


def lm_loss(model: Any, tokenizer: Any, batch: list[SummaryExample], backbone: Backbone) -> torch.Tensor:
    """Mean NLL of each target reply (and its end-of-turn token) after the compressor's prompt."""
    end = min(stop_ids(backbone, newline=False))  # <|im_end|> / eos: the reply must stop there
    rows, starts = [], []
    for ex in batch:
        prompt = chat_ids(backbone, messages(ex.question, ex.view))
        reply = list(tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + [end]
        rows.append(prompt + reply)
        starts.append(len(prompt))
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T) right-padded
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
    losses = []
    for i, (r, s) in enumerate(zip(rows, starts)):
        logits = model.get_output_embeddings()(hidden[i, s - 1 : len(r) - 1]).float()  # (R, V): only reply positions
        losses.append(torch.nn.functional.cross_entropy(logits, ids[i, s : len(r)]))
    return torch.stack(losses).mean()


def train_abstractive(backbone: Backbone, config: Any) -> dict[str, Any]:
    """Label, train, keep the best adapter on dev, write the card; returns the card."""
    t0 = time.perf_counter()
    from lodestar.compress_ctx.train.extractive import start_run

    out, train, dev, peft_model, optimizer = start_run(backbone, config, label_summaries, "summaries.jsonl")
    model = peft_model.base_model.model
    steps_per_epoch = math.ceil(len(train) / config.batch_questions)
    total = steps_per_epoch * config.epochs

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        epoch, i = divmod(step, steps_per_epoch)
        perm = list(range(len(train)))
        random.Random(config.seed + epoch).shuffle(perm)
        batch = [train[j] for j in perm[i * config.batch_questions : (i + 1) * config.batch_questions]]
        return lm_loss(model, backbone.tokenizer, batch, backbone), {}

    def dev_loss() -> dict[str, float]:
        b = config.batch_questions
        return {
            "loss": float(
                np.mean(
                    [float(lm_loss(model, backbone.tokenizer, dev[i : i + b], backbone)) for i in range(0, len(dev), b)]
                )
            )
        }

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
            desc="train abstractive",
        ),
    )
    sources = {s: sum(e.source == s for e in train + dev) for s in ("zero-shot", "extractive", "nothing")}
    card: dict[str, Any] = {
        "kind": "abstractive",
        "base_model": backbone.model_id,
        "torch_dtype": str(backbone.dtype).replace("torch.", ""),
        "objective": "RECOMP abstractive: target = the candidate summary (own zero-shot summary, or best extractive "
        "sentences) that most raises the reader's gold-answer log-likelihood over closed-book by min_gain, else "
        f"{NOTHING!r}; causal-LM loss on the reply",
        "data": {
            "qa_file": str(config.qa_file),
            "corpus": str(config.corpus),
            "train_questions": len(train),
            "dev_questions": len(dev),
            "k": config.k,
            "targets": sources,
            "min_gain": config.min_gain,
            "summary_tokens": config.summary_tokens,
        },
        "lora": {
            "r": config.lora_r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": list(config.target_modules),
        },
        "training": {
            **result.summary(steps_per_epoch),
            "planned_steps": total,
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_questions": config.batch_questions,
            "seed": config.seed,
        },
        "adapter": str(out / "adapter"),
        "use": "Compress(method='abstractive', adapter=<this folder>/adapter)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    t = card["training"]
    (out / "README.md").write_text(
        f"# Abstractive compressor adapter\n\nLoRA adapter for `{card['base_model']}`. Use: {card['use']}.\n\n"
        f"Objective: {card['objective']}.\n\nData: `{config.qa_file}`, passages from `{config.corpus}` "
        f"(top-{config.k} BM25); {len(train)} train / {len(dev)} dev questions; targets {sources}.\n\n"
        f"Training: {t['steps']} of {total} steps (early stop: {t['stopped_early']}), lr {config.lr}, seed {config.seed}; "
        f"dev loss {t['dev_loss_before']} -> {t['dev_loss_best']}.\n"
    )
    return card
