"""ONNX Runtime and OpenVINO as embedding runtimes, for the benchmark only (neither is a dependency).

The decoder (embeddings, layers, final norm) is exported once with dynamic batch and length, taking
the same (B, T) ids, (B, 1, T, T) boolean mask and (B, T) positions as the eager forward, so every
mode whose forward is plain (mean, last, prompteol, echo, bidirectional masks) runs on it; token
prepending's hooks, intermediate output layers and adapters fall back to eager (embed/runtime.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.forward import attention_mask
from lodestar.embed.runtime import Chooser, Compiled

EXTERNAL = ("onnxruntime", "openvino")


class _Decoder(torch.nn.Module):
    """(ids, mask, positions) -> last hidden state: the signature both exporters trace."""

    def __init__(self, decoder: Any) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T = 2, 16
    lengths = torch.tensor([16, 9])
    ids = torch.randint(0, 1000, (B, T))  # (B, T)
    pos = torch.arange(T)[None].expand(B, T).contiguous()  # (B, T)
    return ids, attention_mask(lengths, T, False), pos


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


def _onnxruntime(wrapper: _Decoder, folder: Path) -> Any:
    import onnxruntime as ort

    path = folder / "decoder.onnx"
    torch.onnx.export(
        wrapper,
        _example(),
        str(path),
        input_names=["ids", "mask", "pos"],
        output_names=["hidden"],
        dynamic_axes={"ids": {0: "B", 1: "T"}, "mask": {0: "B", 2: "T", 3: "S"}, "pos": {0: "B", 1: "T"}},
        opset_version=18,
        dynamo=False,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda ids, mask, pos: session.run(None, {"ids": ids, "mask": mask, "pos": pos})[0]


def _openvino(wrapper: _Decoder, folder: Path) -> Any:
    import openvino as ov

    model = ov.convert_model(wrapper, example_input=_example())
    # f32: OpenVINO runs bf16 by default on CPUs with AVX512-BF16/AMX; this measures the fp32 graph.
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda ids, mask, pos: compiled([ids, mask, pos])[0]


def external_engine(name: str, fp32: Backbone) -> EmbeddingEngine:
    """An engine on the fp32 backbone whose plain forwards run on ONNX Runtime or OpenVINO."""
    folder = Path(tempfile.mkdtemp(prefix=f"lodestar-{name}-"))
    wrapper = _Decoder(fp32.decoder).eval()
    with torch.inference_mode(False), torch.no_grad():
        run = (_onnxruntime if name == "onnxruntime" else _openvino)(wrapper, folder)
    engine = EmbeddingEngine(fp32)
    engine.runtime = Chooser(ExportedRuntime(name, run))
    return engine
