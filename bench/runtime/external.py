"""OpenVINO as an embedding runtime, for the benchmark only (not a dependency); ONNX Runtime is the
product's own (embed/onnx_runtime.py), which the benchmark builds through EngineConfig.

The decoder is converted once with the same inputs the ONNX export traces (DecoderGraph): (B, T)
ids, the (B, 1, T, T) boolean mask and (B, T) positions, so every mode whose forward is plain runs on
it; token prepending's hooks, intermediate output layers and adapters fall back to eager.
"""

from __future__ import annotations

from typing import Any

import torch

from lodestar.backbone import Backbone
from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.onnx_runtime import DecoderGraph, ExportedRuntime, example_inputs
from lodestar.embed.runtime import Chooser

EXTERNAL = ("openvino",)


def _openvino(wrapper: DecoderGraph) -> Any:
    import openvino as ov

    model = ov.convert_model(wrapper, example_input=example_inputs())
    # f32: OpenVINO runs bf16 by default on CPUs with AVX512-BF16/AMX; this measures the fp32 graph.
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda ids, mask, pos: compiled([ids, mask, pos])[0]


def external_engine(name: str, fp32: Backbone) -> EmbeddingEngine:
    """An engine on the fp32 backbone whose plain forwards run on OpenVINO."""
    wrapper = DecoderGraph(fp32.decoder).eval()
    with torch.inference_mode(False), torch.no_grad():
        run = _openvino(wrapper)
    engine = EmbeddingEngine(fp32)
    engine.runtime = Chooser(ExportedRuntime(name, run))
    return engine
