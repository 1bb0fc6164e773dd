"""How the embedding forward runs on this hardware: eager (the reference), bf16 matmuls over an fp32
model, torch.compile (inductor), or ONNX Runtime (embed/onnx_runtime.py). A runtime that cannot run
a batch's forward falls back to eager by itself and says why in the log, once per reason.

Measured per mode against eager fp32 (docs/results.md, `bench/runtime/run.py`): on the AVX2-only
EPYC, ONNX Runtime kept every vector at cosine 1.0 and ran 1.16-1.25x as fast, so `auto` picks it on CPU
for a float32 model. On the shared AVX512-BF16 EPYC, `bf16_matmul` (torch.autocast: matmuls in bf16,
the residual stream, norms and softmax in fp32) kept every vector within cosine 0.9998 of fp32 but ran
at 0.85x of eager fp32 (it casts every weight on every forward), and a model cast to bf16 whole ran
about 2x faster but fell below cosine 0.999; there `dtype=auto` loads bf16, which ONNX Runtime does
not take, and the forward stays eager.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.backbone.devices import cpu_has_native_bf16
from lodestar.embed.modes import ForwardSpec
from lodestar.errors import InvalidInput

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "eager", "bf16_matmul", "compile", "onnxruntime")
# What `auto` picks per device type: a runtime enters here only once bench/runtime/run.py shows it
# faster than eager fp32 with every mode within cosine 0.999. Where it cannot run (a bf16 model,
# onnxruntime not installed, a mode it does not take) the forward runs eager.
AUTO: dict[str, str] = {"cpu": "onnxruntime", "cuda": "eager"}


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16 support, a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_runtime(name: str, device: torch.device) -> str:
    """`auto` -> the measured best runtime that holds quality on this hardware (see the module
    docstring); other names are checked."""
    if name not in RUNTIMES:
        raise InvalidInput(f"unknown embedding runtime {name!r}: valid are {', '.join(RUNTIMES)}")
    return AUTO.get(device.type, "eager") if name == "auto" else name


def model_dtype(runtime: str, dtype: str, device: torch.device) -> str:
    """The dtype to load the shared model in: bf16_matmul needs fp32 weights, so a `dtype=auto`
    that would pick bf16 becomes float32 under it (an explicit dtype is kept)."""
    if dtype == "auto" and resolve_runtime(runtime, device) == "bf16_matmul":
        return "float32"
    return dtype


class Runtime:
    """Eager PyTorch: the model as loaded, every mode, the reference the others are measured against."""

    name = "eager"

    def unsupported(self, backbone: Backbone, spec: ForwardSpec) -> str | None:
        """Why this runtime cannot run `spec` on `backbone` (None: it can)."""
        return None

    def context(self, backbone: Backbone) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def decoder(self, backbone: Backbone) -> Callable[..., Any]:
        return backbone.decoder

    def padded_length(self, T: int) -> int:
        """Sequence length the batch is padded to (padding is masked out; real tokens never see it)."""
        return T


class Bf16Matmul(Runtime):
    """Matmuls in bf16 over fp32 weights and an fp32 residual stream (torch.autocast): about the
    speed of a bf16 model where bf16 is native, at a fraction of its error. Hooks, masks and
    LoRA adapters run unchanged inside it."""

    name = "bf16_matmul"

    def unsupported(self, backbone: Backbone, spec: ForwardSpec) -> str | None:
        if backbone.dtype != torch.float32:
            return f"the model is loaded in {str(backbone.dtype).removeprefix('torch.')}, not float32"
        if not native_bf16(backbone.device):
            return f"bf16 is not native on {backbone.device.type} here (it would be emulated, far slower)"
        return None

    def context(self, backbone: Backbone) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(backbone.device.type, dtype=torch.bfloat16)


class Compiled(Runtime):
    """torch.compile (inductor) of the decoder, sequence lengths padded to buckets so a handful of
    graphs serve every batch. Runs the plain forward only: no layer hooks, no adapters."""

    name = "compile"
    BUCKET = 16  # lengths are padded to a multiple of this

    def __init__(self) -> None:
        self._compiled: dict[int, Any] = {}  # id(decoder module) -> compiled callable
        self._lock = threading.Lock()

    def unsupported(self, backbone: Backbone, spec: ForwardSpec) -> str | None:
        if spec.prepend is not None:
            return "token prepending rewrites hidden states between layers (hooks the compiled graph does not run)"
        if spec.output_layer != -1:
            return "an intermediate output layer needs a hook on that layer"
        if spec.adapter is not None:
            return (
                f"adapter {spec.adapter!r} switches LoRA weights per request, which the compiled graph does not track"
            )
        return None

    def decoder(self, backbone: Backbone) -> Callable[..., Any]:
        module = backbone.decoder
        with self._lock:
            fn = self._compiled.get(id(module))
            if fn is None:
                fn = torch.compile(module, dynamic=True)
                self._compiled[id(module)] = fn
        return fn

    def padded_length(self, T: int) -> int:
        return -(-T // self.BUCKET) * self.BUCKET


def _onnxruntime(cache_dir: Path | None) -> Runtime:
    from lodestar.embed.onnx_runtime import OnnxRuntime

    return OnnxRuntime(cache_dir)


_BUILDERS: dict[str, Callable[[Path | None], Runtime]] = {
    "eager": lambda _: Runtime(),
    "bf16_matmul": lambda _: Bf16Matmul(),
    "compile": lambda _: Compiled(),
    "onnxruntime": _onnxruntime,
}
_EAGER = Runtime()


def build_runtime(name: str, device: torch.device, cache_dir: Path | None = None) -> Runtime:
    """The runtime called `name` (`auto` resolved for `device`); `cache_dir` keeps exported graphs."""
    return _BUILDERS[resolve_runtime(name, device)](cache_dir)


class Chooser:
    """Picks the configured runtime per batch, or eager where it cannot run the batch (logged once per reason)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._told: set[str] = set()

    def for_spec(self, backbone: Backbone, spec: ForwardSpec) -> Runtime:
        why = self.runtime.unsupported(backbone, spec)
        if why is None:
            return self.runtime
        if why not in self._told:
            self._told.add(why)
            log.warning("embedding runtime %s falls back to eager: %s", self.runtime.name, why)
        return _EAGER
