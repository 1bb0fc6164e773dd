"""What the scripts of bench/gpu share: decoders of real models' shapes, timing that waits for the
GPU, the environment every JSON records, and atomic writes.

A lent GPU machine has no registry and no room for the bundled weights (94 MB of GGUF; a call carries
64 MiB), so unless LODESTAR_MODEL names weights that are there, the decoders are built from their
configurations with random weights. Speed does not depend on the values of the weights; what does
(which draft tokens a model accepts) is measured on CPU with the real model and recorded as such.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
# Decoder shapes (transformers' LlamaConfig fields): the bundled SmolLM2-135M, and a 1B model with
# Llama 3's 128k vocabulary, where the learned-sparse head starts to weigh.
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    "llama3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    # for a smoke run of these scripts on a CPU (GPU_BENCH_DEVICE=cpu), not for figures
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
}
# Where the scripts run: "cuda", or "cpu" to smoke-test them here (timings then mean nothing).
DEVICE = os.environ.get("GPU_BENCH_DEVICE", "cuda")
# The bundled model's tokenizer (and config), carried without weights by bench/gpu/prepare.sh.
CARRIED_MODEL = ROOT / ".gpu" / "smollm2"


def tokenizer_folder() -> Path:
    """A folder holding the bundled tokenizer: the carried one, else the dequantised bundled model."""
    if (CARRIED_MODEL / "tokenizer.json").is_file():
        return CARRIED_MODEL
    from lodestar.backbone.loader import bundled_gguf, dequantised_cache

    return dequantised_cache(bundled_gguf(), Path.home() / ".cache" / "lodestar")


def real_model() -> str | None:
    """LODESTAR_MODEL when it names weights on this machine, else None (random weights then)."""
    model = os.environ.get("LODESTAR_MODEL", "")
    return model if model and Path(model).exists() else None


def load(name: str, dtype: torch.dtype = torch.bfloat16) -> tuple[Any, str]:
    """(Backbone on CUDA in `dtype`, "real" | "random"): LODESTAR_MODEL's weights for "bundled",
    else a decoder of MODELS[name]'s shape with random weights and the bundled tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lodestar.backbone import Backbone, BackboneConfig, load_backbone

    weights = real_model()
    if name == "bundled" and weights is not None:
        return load_backbone(
            BackboneConfig(model=weights, dtype=str(dtype).removeprefix("torch."), device=DEVICE)
        ), "real"
    shape = MODELS["smollm2-135m" if name == "bundled" else name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    extra: dict[str, Any] = {"attn_implementation": "sdpa"}  # as the loader's models run
    config = LlamaConfig(**shape, max_position_embeddings=8192, pad_token_id=pad, **extra)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config)
    model.to(dtype).eval()  # type: ignore[arg-type]  # transformers wraps `to` (functools.wraps) and mistypes self
    return Backbone.from_model(model, tokenizer, f"{name} (random weights)", BackboneConfig()), "random"


def sync() -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU smoke run)."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def require_device(parser: Any) -> None:
    """Stop a script with a usage error where the device it is to measure is missing."""
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        parser.error("needs a CUDA device (GPU_BENCH_DEVICE=cpu smoke-tests the script)")


def release() -> None:
    """Hand a dropped model's GPU memory back before the next one is built."""
    gc.collect()
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def cuda_seconds(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5) -> float:
    """Median wall seconds of fn, the GPU drained before and after each run."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def environment() -> dict[str, Any]:
    """The machine and software a result was measured with."""
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "host_cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically (a failed run never leaves half a result)."""
    from lodestar.durable import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    print(f"wrote {path}")
