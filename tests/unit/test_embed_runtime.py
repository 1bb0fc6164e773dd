"""Embedding runtimes: `auto` per hardware, the fall-back to eager (with a log line saying why) where a
runtime cannot run a forward, ONNX Runtime's export cache, and on the real model the vectors of
onnxruntime and bf16_weights (what `auto` picks on CPU without and with native bf16) within cosine
0.999 of eager fp32 for every mode (adapters included) and for learned-sparse output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lodestar.backbone import Backbone, BackboneConfig, load_backbone
from lodestar.embed import onnx_runtime
from lodestar.embed import runtime as rt
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.embed.modes import ForwardSpec
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput

CPU = torch.device("cpu")


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


TEXTS = ["A cat sat.", "The old lighthouse keeper watched the storm roll in from the sea.", "Fresh bread"]


def test_auto_picks_the_measured_runtime_and_bf16_matmul_loads_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rt.resolve_runtime("auto", CPU) == rt.AUTO[rt.hardware_key(CPU)]
    assert rt.resolve_runtime("compile", CPU) == "compile"
    assert rt.model_dtype("bf16_matmul", "auto", CPU) == "float32"  # bf16_matmul needs fp32 weights
    assert rt.model_dtype("bf16_matmul", "bfloat16", CPU) == "bfloat16"  # an explicit dtype is kept
    assert rt.model_dtype("eager", "auto", CPU) == "auto"
    monkeypatch.setattr(rt, "native_bf16", lambda device: False)  # an AVX2-only CPU
    assert rt.resolve_runtime("auto", CPU) == "onnxruntime"
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)  # AVX512-BF16 / AMX
    assert rt.resolve_runtime("auto", CPU) == "bf16_weights"
    assert rt.model_dtype("auto", "auto", CPU) == "float32"  # its bf16 copies sit beside fp32 weights
    assert rt.model_dtype("auto", "bfloat16", CPU) == "bfloat16"


def test_unknown_runtime_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInput, match="eager, bf16_matmul, bf16_weights, compile"):
        rt.resolve_runtime("tensorrt", CPU)


def test_compile_falls_back_to_eager_for_hooks_and_adapters(
    tiny_backbone: Backbone, caplog: pytest.LogCaptureFixture
) -> None:
    """Token prepending's layer hooks cannot run in the compiled graph: the batch runs eager, the
    vectors equal the eager engine's, and the log says why (once)."""
    eager = EmbeddingEngine(tiny_backbone)
    compiled = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="compile"))
    try:
        opts = EmbedOptions(mode="token_prepend")
        with caplog.at_level(logging.WARNING, logger="lodestar.embed.runtime"):
            a = compiled.embed(TEXTS, opts).vectors
            compiled.embed(TEXTS, opts)
        b = eager.embed(TEXTS, opts).vectors
        np.testing.assert_array_equal(a, b)
        said = [r.getMessage() for r in caplog.records if "falls back to eager" in r.getMessage()]
        assert len(said) == 1 and "token prepending" in said[0] and "compile" in said[0]
        with_adapter = ForwardSpec(bidirectional=True, adapter="some-adapter")
        assert compiled.runtime.for_spec(tiny_backbone, with_adapter).name == "eager"
        assert compiled.runtime.for_spec(tiny_backbone, compiled.prepare(["x"], EmbedOptions()).spec).name == "compile"
    finally:
        eager.close()
        compiled.close()


@pytest.mark.parametrize(
    ("runtime", "native", "why"),
    [
        ("bf16_matmul", True, "loaded in bfloat16, not float32"),  # the model handed over is bf16
        ("bf16_weights", False, "bf16 is not native"),
    ],
)
def test_bf16_runtimes_fall_back_where_they_do_not_pay(
    tiny_backbone: Backbone,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    runtime: str,
    native: bool,
    why: str,
) -> None:
    monkeypatch.setattr(rt, "native_bf16", lambda device: native)
    model = tiny_backbone.with_dtype(torch.bfloat16) if runtime == "bf16_matmul" else tiny_backbone
    engine = EmbeddingEngine(model, EngineConfig(runtime=runtime))
    try:
        with caplog.at_level(logging.WARNING, logger="lodestar.embed.runtime"):
            engine.embed(TEXTS[:1], EmbedOptions())
        assert any(why in r.getMessage() for r in caplog.records)
    finally:
        engine.close()


PLAIN = [EmbedOptions(mode=m) for m in ("mean", "last", "prompteol", "echo", "bidirectional")]


def test_bf16_weights_runs_every_mode_and_leaves_other_forwards_fp32(
    tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16_weights runs every mode without an adapter itself, token prepending's hooks included,
    within the cosine bound of eager fp32 (forced on here: where bf16 is emulated `auto` never picks
    it); the shared model's own forwards outside it stay exactly fp32."""
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    eager = EmbeddingEngine(tiny_backbone)
    fast = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="bf16_weights"))
    try:
        modes = [*PLAIN, EmbedOptions(mode="token_prepend")]
        before = [eager.embed(TEXTS, o).vectors for o in modes]
        for o, ref in zip(modes, before):
            assert fast.runtime.for_spec(tiny_backbone, fast.prepare(["x"], o).spec).name == "bf16_weights"
            got = fast.embed(TEXTS, o).vectors
            assert not np.array_equal(got, ref)  # it did multiply in bf16
            assert ((unit(got) * unit(ref)).sum(axis=1) >= 0.999).all(), o.mode
        for o, ref in zip(modes, before):  # the Linears now carry bf16 copies; eager forwards ignore them
            np.testing.assert_array_equal(eager.embed(TEXTS, o).vectors, ref)
        with_adapter = ForwardSpec(bidirectional=True, adapter="some-adapter")
        assert fast.runtime.for_spec(tiny_backbone, with_adapter).name == "eager"  # measured off the bound
    finally:
        eager.close()
        fast.close()


@pytest.fixture
def onnx_pair(tiny_backbone: Backbone, tmp_path: Path) -> Iterator[tuple[EmbeddingEngine, EmbeddingEngine]]:
    eager = EmbeddingEngine(tiny_backbone)
    onnx = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="onnxruntime", runtime_cache=tmp_path))
    yield eager, onnx
    eager.close()
    onnx.close()


def test_onnxruntime_runs_every_plain_mode_like_eager(onnx_pair: tuple[EmbeddingEngine, EmbeddingEngine]) -> None:
    """Plain forwards (causal or bidirectional mask, any pooling) run on the exported graph; a text's
    vector does not depend on its batch there either."""
    eager, onnx = onnx_pair
    for opts in PLAIN:
        assert onnx.runtime.for_spec(onnx.backbone, onnx.prepare(["x"], opts).spec).name == "onnxruntime"
        a, b = onnx.embed(TEXTS, opts).vectors, eager.embed(TEXTS, opts).vectors
        assert ((unit(a) * unit(b)).sum(axis=1) >= 0.9999).all(), opts.mode
    alone = onnx.embed(TEXTS[1:2], EmbedOptions()).vectors
    np.testing.assert_allclose(alone[0], onnx.embed(TEXTS, EmbedOptions()).vectors[1], rtol=1e-5, atol=1e-6)


def test_onnxruntime_falls_back_to_eager_for_hooks_adapters_and_bf16(
    onnx_pair: tuple[EmbeddingEngine, EmbeddingEngine], caplog: pytest.LogCaptureFixture
) -> None:
    eager, onnx = onnx_pair
    with caplog.at_level(logging.WARNING, logger="lodestar.embed.runtime"):
        a = onnx.embed(TEXTS, EmbedOptions(mode="token_prepend")).vectors
    np.testing.assert_array_equal(a, eager.embed(TEXTS, EmbedOptions(mode="token_prepend")).vectors)
    assert any("onnxruntime falls back to eager: token prepending" in r.getMessage() for r in caplog.records)
    with_adapter = ForwardSpec(adapter="some-adapter")
    assert onnx.runtime.for_spec(onnx.backbone, with_adapter).name == "eager"
    half = onnx.backbone.with_dtype(torch.bfloat16)
    assert "not float32" in (onnx.runtime.runtime.unsupported(half, ForwardSpec()) or "")


def test_onnxruntime_export_is_cached_and_a_failed_export_runs_eager(
    tiny_backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="onnxruntime", runtime_cache=tmp_path))
    a = first.embed(TEXTS, EmbedOptions()).vectors
    first.close()
    assert len(list((tmp_path / "onnx").glob("decoder-*.onnx"))) == 1

    def no_export(*_: object) -> None:
        raise RuntimeError("the tracer cannot export this architecture")

    monkeypatch.setattr(onnx_runtime, "export", no_export)
    again = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="onnxruntime", runtime_cache=tmp_path))
    try:  # a restart opens the cached graph: no export
        assert again.runtime.for_spec(tiny_backbone, ForwardSpec()).name == "onnxruntime"
        np.testing.assert_allclose(again.embed(TEXTS, EmbedOptions()).vectors, a, rtol=1e-6, atol=1e-7)
    finally:
        again.close()
    elsewhere = EmbeddingEngine(tiny_backbone, EngineConfig(runtime="onnxruntime", runtime_cache=tmp_path / "new"))
    try:  # nothing cached and the export fails: eager, with the reason in the log
        with caplog.at_level(logging.WARNING, logger="lodestar.embed.runtime"):
            b = elsewhere.embed(TEXTS, EmbedOptions()).vectors
        assert elsewhere.runtime.for_spec(tiny_backbone, ForwardSpec()).name == "eager"
        assert any("ONNX export or session failed" in r.getMessage() for r in caplog.records)
        assert ((unit(a) * unit(b)).sum(axis=1) >= 0.9999).all()
    finally:
        elsewhere.close()


# --- the real bundled model (slow) --------------------------------------------------------------

MODES = [
    EmbedOptions(mode="mean"),
    EmbedOptions(mode="last"),
    EmbedOptions(mode="prompteol"),
    EmbedOptions(mode="echo"),
    EmbedOptions(mode="token_prepend"),
    EmbedOptions(mode="bidirectional", adapter="bidirectional-stsb"),
]
REAL = [
    "A man is playing a guitar.",
    "The committee postponed the vote on the new harbour bridge until next spring.",
    "Stocks fell sharply after the announcement.",
    "Fresh bread",
]


@pytest.fixture(scope="module")
def fp32_backbone() -> Backbone:
    from tinymodel import CACHE_DIR

    from lodestar.services.settings import SHIPPED_ADAPTERS

    return load_backbone(BackboneConfig(dtype="float32", cache_dir=CACHE_DIR, adapter_dirs=(SHIPPED_ADAPTERS,)))


@pytest.fixture(scope="module", params=["onnxruntime", "bf16_weights"])
def pair(fp32_backbone: Backbone, request: pytest.FixtureRequest) -> Iterator[tuple[EmbeddingEngine, EmbeddingEngine]]:
    """(eager fp32 reference, one text a row; a fast path as served, texts packed where it can):
    what `auto` picks on CPU, onnxruntime where bf16 is emulated and bf16_weights where it is native
    (elsewhere it falls back to eager, which the bound then holds trivially)."""
    ref = EmbeddingEngine(fp32_backbone, EngineConfig(pack=False))
    fast = EmbeddingEngine(fp32_backbone, EngineConfig(runtime=request.param))
    yield ref, fast
    ref.close()
    fast.close()


@pytest.mark.slow
@pytest.mark.parametrize("opts", MODES, ids=[f"{o.mode}{'+' + o.adapter if o.adapter else ''}" for o in MODES])
def test_chosen_runtime_within_cosine_bound_of_eager_fp32(pair, opts: EmbedOptions) -> None:  # type: ignore[no-untyped-def]
    ref, fast = pair
    spec = fast.prepare(["x"], opts).spec
    chosen = fast.runtime.for_spec(fast.backbone, spec).name
    if fast.config.runtime == "bf16_weights" and rt.native_bf16(fast.backbone.device):
        # hooks, echo and bidirectional masks run on it; adapters eager
        assert chosen == ("eager" if opts.adapter else "bf16_weights")
    if fast.config.runtime == "onnxruntime" and opts.mode in ("mean", "last", "prompteol", "echo"):
        assert chosen == "onnxruntime"  # plain forwards; hooks and adapters run eager
    a = ref.embed(REAL, opts).vectors
    b = fast.embed(REAL, opts).vectors
    cos = (unit(a) * unit(b)).sum(axis=1)
    assert (cos >= 0.999).all(), f"{opts.mode}: cosines to eager fp32 {cos}"


@pytest.mark.slow
def test_chosen_runtime_learned_sparse_within_bound(pair) -> None:  # type: ignore[no-untyped-def]
    ref, fast = pair
    opts = EmbedOptions(mode="echo", adapter="sparse-squad", sparse=True, with_dense=True, sparse_top_k=256)
    a, b = ref.embed(REAL, opts), fast.embed(REAL, opts)
    assert ((unit(a.vectors) * unit(b.vectors)).sum(axis=1) >= 0.999).all()
    for (ia, wa), (ib, wb) in zip(a.sparse, b.sparse):
        da, db = dict(zip(ia.tolist(), wa.tolist())), dict(zip(ib.tolist(), wb.tolist()))
        dot = sum(w * db.get(t, 0.0) for t, w in da.items())
        cos = dot / np.sqrt(sum(w * w for w in da.values()) * sum(w * w for w in db.values()))
        assert cos >= 0.999, f"learned-sparse cosine to eager fp32 {cos}"
