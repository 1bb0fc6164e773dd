"""How the embedding forward runs on this hardware: eager (the reference), bf16 matmuls over an fp32
model (per forward under autocast, or on bf16 weight copies made once), torch.compile (inductor), or
ONNX Runtime (embed/onnx_runtime.py). A runtime that cannot run a batch's forward falls back to eager
by itself and says why in the log, once per reason.

Measured per mode against eager fp32 (docs/results.md, `bench/runtime/run.py`), every vector within
cosine 0.999 and STS-B within 0.003 unless said:
- AVX512-BF16 EPYC (bf16 native): `bf16_weights` 1.44-1.73x, cosine >= 0.9998; ONNX Runtime
  1.21-1.26x; a model cast to bf16 whole 1.71-1.84x but down to cosine 0.990 (fails); `bf16_matmul`
  0.85x (it casts every weight on every forward). `auto` picks bf16_weights there.
- AVX2-only EPYC (bf16 emulated): ONNX Runtime 1.16-1.25x at cosine 1.0. `auto` picks it there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.backbone.devices import cpu_has_native_bf16
from lodestar.embed.modes import ForwardSpec
from lodestar.errors import InvalidInput

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "eager", "bf16_matmul", "bf16_weights", "compile", "onnxruntime")
# What `auto` picks per hardware (hardware_key): a runtime enters here only once bench/runtime/run.py
# shows it faster than eager fp32 with every mode within cosine 0.999. Where it cannot run (a bf16
# model, onnxruntime not installed, a mode it does not take) the forward runs eager.
AUTO: dict[str, str] = {"cpu": "onnxruntime", "cpu+bf16": "bf16_weights", "cuda": "eager"}
# Runtimes that multiply in bf16 over fp32 weights: `dtype=auto` loads float32 under them.
NEEDS_FP32 = ("bf16_matmul", "bf16_weights")


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
    return AUTO.get(hardware_key(device), "eager") if name == "auto" else name


def hardware_key(device: torch.device) -> str:
    """`cpu+bf16` for a CPU that computes bf16 natively (AVX512-BF16/AMX), else the device type."""
    return "cpu+bf16" if device.type == "cpu" and native_bf16(device) else device.type


def model_dtype(runtime: str, dtype: str, device: torch.device) -> str:
    """The dtype to load the shared model in: bf16_matmul and bf16_weights need fp32 weights, so a
    `dtype=auto` that would pick bf16 becomes float32 under them (an explicit dtype is kept)."""
    if dtype == "auto" and resolve_runtime(runtime, device) in NEEDS_FP32:
        return "float32"
    return dtype


def bf16_unsupported(backbone: Backbone) -> str | None:
    """Why bf16 matmuls over an fp32 model do not pay here (None: they do)."""
    if backbone.dtype != torch.float32:
        return f"the model is loaded in {str(backbone.dtype).removeprefix('torch.')}, not float32"
    if not native_bf16(backbone.device):
        return f"bf16 is not native on {backbone.device.type} here (it would be emulated, far slower)"
    return None


class Runtime:
    """Eager PyTorch: the model as loaded, every mode, the reference the others are measured against."""

    name = "eager"
    packs = True  # runs texts packed into shared rows (embed/forward.py): it takes any 4D mask as given

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
        return bf16_unsupported(backbone)

    def context(self, backbone: Backbone) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(backbone.device.type, dtype=torch.bfloat16)


class Compiled(Runtime):
    """torch.compile (inductor) of the decoder, sequence lengths padded to buckets so a handful of
    graphs serve every batch. Runs the plain forward only: no layer hooks, no adapters."""

    name = "compile"
    packs = False  # its graphs are compiled for one text a row, bucketed by padded length
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


# a Linear and the forward it takes on inside Bf16Weights.context
_Swap = tuple[torch.nn.Linear, Callable[[torch.Tensor], torch.Tensor]]


def _bf16_linear(linear: torch.nn.Linear, w16: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` multiplied in bf16 on `w16`, its weight's bf16 copy; fp32 in, fp32 out, bias fp32."""
    out = torch.nn.functional.linear(x.to(torch.bfloat16), w16).to(x.dtype)
    return out + linear.bias if linear.bias is not None else out


class Bf16Weights(Runtime):
    """Every Linear of the decoder multiplies in bf16 on a bf16 copy of its weight, made once; the
    residual stream, norms, attention, softmax and biases stay fp32. The speed of bf16 matmuls where
    they are native, without bf16_matmul's per-forward weight casts or a bf16 model's residual
    error. The copies cost half the Linears' fp32 memory. The model is the shared one: the copies
    are swapped in for this runtime's forwards only, under the backbone's lock (as forward.py puts
    its hooks on), so generation and compression never see them. Layer hooks (token prepending) run
    unchanged; adapters run eager: with bf16 matmuls the vectors of bidirectional-stsb fell to cosine
    0.997 of fp32 on STS-B dev."""

    name = "bf16_weights"

    def __init__(self) -> None:
        # id(decoder module) -> each of its Linears with its forward on the bf16 copy of its weight
        self._copies: dict[int, list[_Swap]] = {}
        self._lock = threading.Lock()

    def unsupported(self, backbone: Backbone, spec: ForwardSpec) -> str | None:
        if spec.adapter is not None:  # measured: bidirectional-stsb's vectors fell to cosine 0.997 of fp32
            return f"adapter {spec.adapter!r}: an adapter's vectors drift past cosine 0.999 of fp32 with bf16 matmuls"
        return bf16_unsupported(backbone)

    def _linears(self, decoder: torch.nn.Module) -> list[_Swap]:
        with self._lock, torch.no_grad():
            copies = self._copies.get(id(decoder))
            if copies is None:
                linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
                copies = self._copies[id(decoder)] = [
                    (m, functools.partial(_bf16_linear, m, m.weight.detach().to(torch.bfloat16))) for m in linears
                ]
            return copies

    @contextlib.contextmanager
    def context(self, backbone: Backbone) -> Iterator[None]:
        """Entered under backbone.lock (embed/forward.py): no other forward runs while the swap is on."""
        copies = self._linears(backbone.decoder)
        for m, forward in copies:
            m.forward = forward  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            for m, _ in copies:
                del m.forward  # the class's own forward again


def _onnxruntime(cache_dir: Path | None) -> Runtime:
    from lodestar.embed.onnx_runtime import OnnxRuntime

    return OnnxRuntime(cache_dir)


_BUILDERS: dict[str, Callable[[Path | None], Runtime]] = {
    "eager": lambda _: Runtime(),
    "bf16_matmul": lambda _: Bf16Matmul(),
    "bf16_weights": lambda _: Bf16Weights(),
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
