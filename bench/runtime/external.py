"""OpenVINO as an embedding runtime, for the benchmark only (not a dependency); ONNX Runtime is the
product's own (embed/onnx_runtime.py) and the benchmark builds it through EngineConfig.

The decoder is converted once with the same inputs the ONNX export traces (DecoderGraph): (B, T)
ids, the (B, 1, T, T) boolean mask and (B, T) positions, so every mode whose forward is plain runs on
it; token prepending's hooks, intermediate output layers and adapters fall back to eager.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.embed.onnx_runtime import DecoderGraph, example_inputs
from lodestar.embed.runtime import Chooser, Compiled

EXTERNAL = ("onnxruntime", "openvino")


class ExportedRuntime(Compiled):
    """A runtime whose decoder call goes to an exported graph (same fall-back rules as compile)."""

    def __init__(self, name: str, run: Any) -> None:
        super().__init__()
        self.name = name
        self._run = run

    def decoder(self, backbone: Backbone) -> Any:
        def call(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, **_: Any) -> Any:
            out = self._run(input_ids.numpy(), attention_mask.numpy(), position_ids.contiguous().numpy())
            return SimpleNamespace(last_hidden_state=torch.from_numpy(np.asarray(out)))

        return call

    def padded_length(self, T: int) -> int:
        return T


def _openvino(wrapper: DecoderGraph) -> Any:
    import openvino as ov

    model = ov.convert_model(wrapper, example_input=example_inputs())
    # f32: OpenVINO runs bf16 by default on CPUs with AVX512-BF16/AMX; this measures the fp32 graph.
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda ids, mask, pos: compiled([ids, mask, pos])[0]


def external_engine(name: str, fp32: Backbone) -> EmbeddingEngine:
    """An engine on the fp32 backbone whose plain forwards run on ONNX Runtime or OpenVINO."""
    if name == "onnxruntime":
        cache = Path(tempfile.mkdtemp(prefix="lodestar-onnx-"))  # a fresh export, timed like the others
        return EmbeddingEngine(fp32, EngineConfig(runtime="onnxruntime", runtime_cache=cache))
    wrapper = DecoderGraph(fp32.decoder).eval()
    with torch.inference_mode(False), torch.no_grad():
        run = _openvino(wrapper)
    engine = EmbeddingEngine(fp32)
    engine.runtime = Chooser(ExportedRuntime(name, run))
    return engine
