"""Pieces every embedding trainer shares: LoRA settings, stage folders, dev Spearman, cards."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.backbone.train.loop import LoopConfig, LoopResult, atomic_dir, fit, lora_model
from lodestar.embed.eval.sts import spearman
from lodestar.embed.train.data import Pair
from lodestar.embed.train.encoder import TrainEncoder

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = TARGET_MODULES


@dataclass(frozen=True)
class RunSettings:
    out_dir: Path
    seed: int = 0
    eval_every: int = 25
    patience: int = 4
    resume: bool = True
    progress: bool = True
    data_licence: str = ""  # written into the card: the licence of the training data
    lora: LoraSettings = field(default_factory=LoraSettings)


def batches(items: list, size: int, step: int, seed: int) -> list:
    """The batch of `step` over seeded per-epoch permutations (a resumed run continues the order)."""
    import random

    per_epoch = max(1, len(items) // size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(len(items)))
    random.Random(seed + epoch).shuffle(order)
    return [items[j] for j in order[i * size : (i + 1) * size]]


@torch.no_grad()
def pair_spearman(encoder: TrainEncoder, pairs: list[Pair], batch: int = 64) -> float:
    """Spearman of cosine vs gold on scored pairs (the dev metric of STS-style training)."""
    cos = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        a = encoder.dense([p.a for p in chunk])
        b = encoder.dense([p.b for p in chunk])
        cos.append((a * b).sum(-1).float().cpu().numpy())
    return spearman(np.concatenate(cos), np.asarray([p.score for p in pairs]))


@contextmanager
def attention_dropout(model: Any, p: float) -> Iterator[None]:
    """SimCSE needs dropout noise; Llama-family attention keeps its rate per layer (0 by default)."""
    layers = [m for m in model.modules() if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float)]
    before = [m.attention_dropout for m in layers]
    for m in layers:
        m.attention_dropout = p
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m.attention_dropout = b


class Stages:
    """A multi-stage run under one folder: `<out>/<stage>/` per stage, each continuing the LoRA
    weights of the previous one; a finished stage leaves `done.json` and is skipped on a rerun,
    unless the rerun asks it for more steps than it ran (and it did not stop early): then it
    continues from its checkpoint, and the stages after it, built on its old weights, start over.
    The last stage's best adapter is copied to `<out>/adapter`."""

    def __init__(self, backbone: Backbone, run: RunSettings) -> None:
        self.backbone = backbone
        self.run = run
        self.out = Path(run.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.peft_model: Any = None
        self.last_adapter: Path | None = None
        self.reports: list[dict[str, Any]] = []
        self.trained = False  # a stage trained in this run: later stages' folders are out of date
        self.t0 = time.perf_counter()

    @property
    def model(self) -> Any:
        """The *ForCausalLM with LoRA layers (what TrainEncoder wraps)."""
        return self.peft_model.base_model.model

    def _load(self, init_from: Path | None) -> None:
        base = self.backbone.model
        if self.peft_model is not None:  # drop the previous stage's layers (its adapter is on disk)
            base = self.peft_model.unload()
            self.backbone.model = base
        lo = self.run.lora
        self.peft_model = lora_model(base, lo.r, lo.alpha, lo.dropout, lo.target_modules, init_from)

    def stage(
        self,
        name: str,
        steps: int,
        lr: float,
        make: Callable[
            [], tuple[Callable[[int], tuple[torch.Tensor, dict[str, float]]], Callable[[], dict[str, float]]]
        ],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """Run stage `name` (or reuse it when done): `make()` builds (step_loss, dev_loss) once the
        LoRA model for the stage exists."""
        folder = self.out / name
        done = folder / "done.json"
        if self.trained and folder.exists():
            shutil.rmtree(folder)  # it continued weights that an earlier stage has since changed
        if done.is_file():
            report = json.loads(done.read_text())
            if report.get("stopped_early") or report.get("steps", 0) >= steps:
                self.last_adapter = folder / "adapter"
                self.reports.append(report)
                return report
            done.unlink()  # asked for more steps: continue from the checkpoint
        self.trained = True
        self._load(self.last_adapter)
        step_loss, dev_loss = make()
        optimizer = torch.optim.AdamW([p for p in self.peft_model.parameters() if p.requires_grad], lr=lr)
        r = self.run
        result: LoopResult = fit(
            self.peft_model,
            optimizer,
            step_loss,
            dev_loss,
            LoopConfig(
                out_dir=folder,
                steps=steps,
                eval_every=r.eval_every,
                checkpoint_every=r.eval_every,
                patience=r.patience,
                resume=r.resume,
                progress=r.progress,
                desc=f"train {name}",
            ),
        )
        report = {
            "stage": name,
            "lr": lr,
            "planned_steps": steps,
            **info,
            **result.summary(r.eval_every),
            "dev": result.dev[-1] if result.dev else None,
        }
        done.write_text(json.dumps(report, indent=2) + "\n")
        self.last_adapter = folder / "adapter"  # the next stage starts from this stage's best weights
        self.reports.append(report)
        return report

    def finish(self, kind: str, extra: dict[str, Any], command: str = "") -> dict[str, Any]:
        """Copy the last stage's best adapter to <out>/adapter and write card.json + README.md."""
        adapter = self.last_adapter
        assert adapter is not None
        atomic_dir(self.out / "adapter", lambda tmp: shutil.copytree(adapter, tmp, dirs_exist_ok=True))
        card = {
            "kind": kind,
            "base_model": self.backbone.model_id,
            "torch_dtype": str(self.backbone.dtype).replace("torch.", ""),
            "lora": asdict(self.run.lora),
            "seed": self.run.seed,
            "data_licence": self.run.data_licence,
            "stages": self.reports,
            **extra,
            "adapter": str(self.out / "adapter"),
            "command": command,
            "seconds": round(time.perf_counter() - self.t0, 1),
        }
        (self.out / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
        lines = [f"# {kind} adapter", "", f"LoRA adapter for `{card['base_model']}` ({card['torch_dtype']}).", ""]
        if extra.get("use"):
            lines += [f"Use: {extra['use']}", ""]
        if command:
            lines += ["Reproduce:", "", "```bash", command, "```", ""]
        lines += [
            f"Training data licence: {self.run.data_licence or 'not stated'}",
            "",
            "| stage | steps | dev before | dev best |",
            "|---|---|---|---|",
        ]
        for s in self.reports:
            lines.append(
                f"| {s['stage']} | {s['steps']} of {s['planned_steps']} | {s.get('dev_loss_before')} | {s.get('dev_loss_best')} |"
            )
        (self.out / "README.md").write_text("\n".join(lines) + "\n")
        return card
