"""ONNX Runtime as the embedding forward on CPU.

The decoder (embeddings, layers, final norm) is exported once per model with dynamic batch and
length, taking the eager forward's own inputs: (B, T) ids, the (B, 1, T, T) boolean mask of
embed/forward.py and (B, T) positions. So every mode whose forward is plain runs on it (mean, last,
PromptEOL, echo, and the learned-sparse head on its hidden states); token prepending's hooks,
intermediate output layers and adapters run eager (the rules of `Compiled`, embed/runtime.py).

The export is cached on disk under a key of the model's identity, shapes and a sample of its
weights, the torch and ONNX Runtime versions: a restart loads it in about a second. ORT's threads
are created by the thread that opens the session (the batcher or a work thread) and inherit its
CPU priority. Measured on the AVX2-only EPYC (docs/results.md, "Embedding runtimes on CPU"): every
vector at cosine 1.0 to eager fp32, forwards 1.16-1.25x as fast depending on the mode.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.embed.modes import ForwardSpec
from lodestar.embed.runtime import Compiled

log = logging.getLogger(__name__)

OPSET = 18


@functools.cache
def available() -> bool:
    """Whether onnxruntime and onnx (the exporter writes with it) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class DecoderGraph(torch.nn.Module):
    """(ids, mask, positions) -> last hidden state: the signature the exporter traces."""

    def __init__(self, decoder: Any) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small batch of the decoder's three inputs, to trace with (one row padded)."""
    from lodestar.embed.forward import attention_mask

    B, T = 2, 16
    ids = torch.randint(0, 100, (B, T))  # (B, T)
    pos = torch.arange(T)[None].expand(B, T).contiguous()  # (B, T)
    return ids, attention_mask(torch.tensor([16, 9]), T, False), pos


def model_key(backbone: Backbone) -> str:
    """What the exported graph depends on: the model's id and config, every parameter's name and
    shape with a strided sample of its values, and the exporter's and runtime's versions."""
    import onnxruntime

    h = hashlib.sha256()
    config = backbone.model.config.to_dict() if hasattr(backbone.model.config, "to_dict") else {}
    h.update(
        json.dumps(
            [backbone.model_id, config, torch.__version__, onnxruntime.__version__, OPSET], default=str, sort_keys=True
        ).encode()
    )
    with torch.no_grad():
        for name, p in backbone.decoder.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].float().cpu().numpy()
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:24]


def export(backbone: Backbone, path: Path) -> None:
    """Trace the decoder (no adapter active) into `path`, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with (
            backbone.lock,
            backbone.adapters.use(None),
            torch.inference_mode(False),
            torch.no_grad(),
            warnings.catch_warnings(),
        ):
            # the tracer's notes on shape-dependent Python branches (the mask is always given, so the
            # branches it fixes are the ones every forward takes) and the legacy exporter's deprecation
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                DecoderGraph(backbone.decoder).eval(),
                example_inputs(),
                tmp,
                input_names=["ids", "mask", "pos"],
                output_names=["hidden"],
                dynamic_axes={"ids": {0: "B", 1: "T"}, "mask": {0: "B", 2: "T", 3: "S"}, "pos": {0: "B", 1: "T"}},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: one trace, no torch.export guards per shape
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ExportedRuntime(Compiled):
    """Plain forwards on an exported graph, `graph(backbone)(ids, mask, positions)` with numpy arrays
    in and the last hidden state out; the rest eager, by Compiled's rules. `run` serves when the
    graph does not depend on the backbone (the benchmark's OpenVINO)."""

    packs = True  # the graph takes the (B, 1, T, T) mask as given: packed rows run as padded ones do

    def __init__(self, name: str, run: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.name = name
        self._run = run

    def graph(self, backbone: Backbone) -> Callable[..., Any]:
        assert self._run is not None
        return self._run

    def padded_length(self, T: int) -> int:
        return T  # dynamic shapes: no buckets to pad to

    def decoder(self, backbone: Backbone) -> Any:
        run = self.graph(backbone)

        def call(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, **_: Any) -> Any:
            out = run(input_ids.cpu().numpy(), attention_mask.cpu().numpy(), position_ids.contiguous().cpu().numpy())
            return SimpleNamespace(last_hidden_state=torch.from_numpy(np.asarray(out)))

        return call


class OnnxRuntime(ExportedRuntime):
    """Plain forwards on the exported decoder, run by ONNX Runtime's CPU kernels; the rest eager."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        super().__init__("onnxruntime")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "lodestar"
        self._sessions: dict[int, Any] = {}  # id(decoder module) -> session
        self._failed: dict[int, str] = {}  # id(decoder module) -> why the export or the session failed

    def unsupported(self, backbone: Backbone, spec: ForwardSpec) -> str | None:
        why = super().unsupported(backbone, spec)
        if why is not None:
            return why
        if backbone.device.type != "cpu":
            return f"the model is on {backbone.device.type}; this runtime runs ONNX Runtime's CPU kernels"
        if backbone.dtype != torch.float32:
            return f"the model is loaded in {str(backbone.dtype).removeprefix('torch.')}, not float32"
        if not available():
            return "onnxruntime (or onnx, which the export writes with) is not installed"
        if id(backbone.decoder) in self._sessions:  # every batch after the first: no lock
            return None
        return self._prepare(backbone)

    def _prepare(self, backbone: Backbone) -> str | None:
        """Open the model's session (exporting it first unless cached); a failure is the reason to
        run eager from then on."""
        key = id(backbone.decoder)
        with self._lock:
            if key not in self._sessions and key not in self._failed:
                try:
                    self._sessions[key] = self._open(backbone)
                except Exception as exc:  # an architecture the tracer cannot export, a full disk, ...
                    log.exception("ONNX export or session failed for %s", backbone.model_id)
                    self._failed[key] = f"the ONNX export or session failed ({type(exc).__name__}: {str(exc)[:200]})"
            return self._failed.get(key)

    def _open(self, backbone: Backbone) -> Any:
        import onnxruntime as ort

        path = self.cache_dir / "onnx" / f"decoder-{model_key(backbone)}.onnx"
        if not path.exists():
            start = time.perf_counter()
            export(backbone, path)
            log.info("exported %s to ONNX in %.1f s: %s", backbone.model_id, time.perf_counter() - start, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def graph(self, backbone: Backbone) -> Callable[..., Any]:
        session = self._sessions[id(backbone.decoder)]  # opened by unsupported(), which the Chooser asks first
        return lambda ids, mask, pos: session.run(None, {"ids": ids, "mask": mask, "pos": pos})[0]
