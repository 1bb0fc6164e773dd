"""The training loop every LoRA trainer shares (compressors, embedding adapters, sparse heads).

A trainer supplies `step_loss(step)` (the loss of the batch for that step; batches are picked from
the step number, so a resumed run sees the same order) and `dev_loss()`; `fit` does the rest:
resume from `out/checkpoint` (adapter, optimiser, RNG, history), evaluate on dev every
`eval_every` steps keeping the best adapter in `out/adapter`, stop early after `patience`
evaluations without improvement, and checkpoint atomically every `checkpoint_every` steps.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lodestar.backbone.adapters import ADAPTER_FILE
from lodestar.errors import NotFound


@dataclass(frozen=True)
class LoopConfig:
    out_dir: Path
    steps: int
    eval_every: int = 10
    checkpoint_every: int = 10
    patience: int = 3  # evaluations without a better dev loss before stopping
    resume: bool = True
    progress: bool = True
    desc: str = "train"
    max_grad_norm: float = 1.0


@dataclass
class LoopState:
    step: int = 0
    best_dev: float = math.inf
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LoopResult:
    state: LoopState
    stopped_early: bool
    resumed_from: int

    @property
    def dev(self) -> list[dict[str, float]]:
        return [h for h in self.state.history if "dev_loss" in h]

    def train_losses(self) -> list[float]:
        return [h["train_loss"] for h in self.state.history if "train_loss" in h]

    def summary(self, window: int) -> dict[str, Any]:
        """Steps, early stop, first/last mean train loss over `window` steps, dev before/best."""
        losses = self.train_losses()
        w = max(1, min(window, len(losses) // 2)) if losses else 1
        dev = self.dev
        return {
            "steps": self.state.step,
            "stopped_early": self.stopped_early,
            "resumed_from_step": self.resumed_from,
            "train_loss_first": round(float(np.mean(losses[:w])), 4) if losses else None,
            "train_loss_last": round(float(np.mean(losses[-w:])), 4) if losses else None,
            "dev_loss_before": dev[0]["dev_loss"] if dev else None,
            "dev_loss_best": self.state.best_dev if dev else None,
        }


def atomic_dir(target: Path, write: Callable[[Path], object]) -> None:
    """Write a folder through `write(tmp)` then swap it in, so a crash never leaves half a folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(peft_model: Any, optimizer: Any, state: LoopState, folder: Path) -> None:
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(tmp / "adapter")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "state": asdict(state),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
            },
            tmp / "state.pt",
        )

    atomic_dir(folder, write)


def load_checkpoint(peft_model: Any, optimizer: Any, folder: Path) -> LoopState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
    saved = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["python"])
    np.random.set_state(saved["rng"]["numpy"])
    return LoopState(**saved["state"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adapter_folder(path: Path) -> Path:
    """The peft folder at `path`: itself, or its `adapter/` (a training run's --out folder)."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_FILE).is_file():
            return folder
    raise NotFound(f"no peft adapter at {path}: expected {path}/{ADAPTER_FILE} or {path}/adapter/{ADAPTER_FILE}")


def lora_model(
    model: Any, r: int, alpha: int, dropout: float, target_modules: tuple[str, ...], init_from: Path | None = None
) -> Any:
    """Inject trainable LoRA layers (fp32 whatever the base dtype); `init_from` continues an
    existing adapter (e.g. stage 2 from stage 1)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_from is not None:
        peft_model = PeftModel.from_pretrained(model, str(adapter_folder(init_from)), is_trainable=True)
    else:
        peft_model = get_peft_model(
            model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
        )
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def fit(
    peft_model: Any,
    optimizer: Any,
    step_loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    dev_loss: Callable[[], dict[str, float]],
    cfg: LoopConfig,
) -> LoopResult:
    """Train for cfg.steps (resuming), keeping the best adapter on dev; see the module docstring."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    state = LoopState()
    if cfg.resume and (ckpt / "state.pt").is_file():
        state = load_checkpoint(peft_model, optimizer, ckpt)
    resumed_from = state.step
    params = [p for p in peft_model.parameters() if p.requires_grad]

    def evaluate() -> float:
        peft_model.eval()
        with torch.no_grad():
            metrics = dev_loss()
        state.history.append({"step": state.step, **{f"dev_{k}": v for k, v in metrics.items()}})
        return float(metrics["loss"])

    if state.step == 0:
        state.best_dev = evaluate()
        atomic_dir(out / "adapter", lambda tmp: peft_model.save_pretrained(tmp))
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=state.step, desc=cfg.desc, unit="step")
    stopped = state.bad_evals >= cfg.patience
    try:
        while state.step < cfg.steps and not stopped:
            peft_model.train()
            loss, metrics = step_loss(state.step)
            optimizer.zero_grad()
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            state.step += 1
            state.history.append({"step": state.step, "train_loss": float(loss.item()), **metrics})
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", best_dev=f"{state.best_dev:.3f}")
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                dev = evaluate()
                if dev < state.best_dev - 1e-6:
                    state.best_dev, state.bad_evals = dev, 0
                    atomic_dir(out / "adapter", lambda tmp: peft_model.save_pretrained(tmp))
                else:
                    state.bad_evals += 1
                    stopped = state.bad_evals >= cfg.patience
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps or stopped:
                save_checkpoint(peft_model, optimizer, state, ckpt)
    finally:
        if bar:
            bar.close()
    return LoopResult(state, stopped, resumed_from)
