"""Backbone loading: source resolution and its errors, Hugging Face folder and GGUF loads, and the
device/dtype choice (bf16 on CPU only where the hardware computes it natively)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodel import CACHE_DIR, build_tiny

from lodestar.backbone import Backbone, BackboneConfig, devices, load_backbone, resolve_device, resolve_dtype
from lodestar.backbone.loader import BUNDLED_ID, bundled_gguf, dequantised_cache, resolve_source
from lodestar.embed.forward import hidden_states
from lodestar.embed.modes import ForwardSpec, InputBuilder, get_mode
from lodestar.errors import InvalidInput

# --- resolve_source -----------------------------------------------------------------------------


def test_bundled_resolves_to_the_packaged_gguf() -> None:
    for name in ("bundled", ""):
        kind, path, model_id = resolve_source(name)
        assert kind == "gguf" and path == bundled_gguf() and model_id == BUNDLED_ID
    assert path.is_file() and path.suffix == ".gguf"


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(InvalidInput) as err:
        resolve_source(str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "'bundled'" in msg and "config.json" in msg and ".gguf" in msg  # says what is allowed


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 8)
    with pytest.raises(InvalidInput, match=r"model\.bin' is not a \.gguf file"):
        resolve_source(str(f))


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInput, match="has no config.json and no .gguf file"):
        resolve_source(str(tmp_path))


def test_folder_with_several_gguf_files_asks_to_name_one(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(InvalidInput, match=r"no config.json and 2 .gguf files \(name one\)"):
        resolve_source(str(tmp_path))


def test_folder_with_one_gguf_or_a_config(tmp_path: Path) -> None:
    (tmp_path / "only.gguf").write_bytes(b"")
    assert resolve_source(str(tmp_path)) == ("gguf", tmp_path / "only.gguf", "only")
    assert resolve_source(str(tmp_path / "only.gguf")) == ("gguf", tmp_path / "only.gguf", "only")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == ("hf", tmp_path, tmp_path.name)


# --- loading ------------------------------------------------------------------------------------


def test_load_from_a_hugging_face_folder(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    tiny = build_tiny(tokenizer, layers=2, seed=3)
    folder = tmp_path / "tiny-hf"
    tiny.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = load_backbone(BackboneConfig(model=str(folder), dtype="float32", device="cpu", cache_dir=tmp_path))
    assert loaded.model_id == "tiny-hf"
    assert (loaded.num_layers, loaded.hidden_size) == (2, 64)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert not loaded.model.training
    enc = InputBuilder(loaded.tokenizer).build(get_mode("mean"), "hello there", "{text}", "", 64, True)
    a, _ = hidden_states(tiny, [enc], ForwardSpec())
    b, _ = hidden_states(loaded, [enc], ForwardSpec())
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # same weights, same outputs


def test_load_from_a_folder_that_is_not_a_model(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # no weights
    with pytest.raises(InvalidInput, match="cannot load a causal LM from"):
        load_backbone(BackboneConfig(model=str(tmp_path), dtype="float32", device="cpu", cache_dir=tmp_path))


def test_dequantised_cache_is_reused(bundled_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("dequantised again although cached")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert dequantised_cache(bundled_gguf(), CACHE_DIR) == bundled_folder
    assert (bundled_folder / "config.json").is_file() and (bundled_folder / "model.safetensors").is_file()


@pytest.mark.slow
def test_load_from_a_gguf_path_equals_the_bundled_load(backbone: Backbone) -> None:
    path = bundled_gguf()
    loaded = load_backbone(BackboneConfig(model=str(path), cache_dir=CACHE_DIR))
    assert loaded.model_id == path.stem
    assert loaded.dtype == backbone.dtype and loaded.num_layers == backbone.num_layers == 30
    ours, theirs = loaded.model.state_dict(), backbone.model.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    assert loaded.tokenizer("hello world")["input_ids"] == backbone.tokenizer("hello world")["input_ids"]


# --- device and dtype ---------------------------------------------------------------------------


class FakeCpuinfo:
    """Stands in for pathlib.Path inside devices: /proc/cpuinfo with the given flags."""

    text: str | None = ""

    def __init__(self, path: str) -> None:
        assert str(path) == "/proc/cpuinfo"

    def read_text(self) -> str:
        if self.text is None:
            raise OSError("no /proc here")
        return self.text


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("flags : fpu sse avx2 fma avx512f avx512bw", False),
        ("flags : fpu avx2 avx512f avx512_bf16", True),
        ("flags : fpu avx2 amx_tile amx_bf16 amx_int8", True),
        (None, False),  # no /proc/cpuinfo
    ],
)
def test_cpu_has_native_bf16_reads_cpuinfo(monkeypatch: pytest.MonkeyPatch, flags: str | None, native: bool) -> None:
    monkeypatch.setattr(FakeCpuinfo, "text", flags)
    monkeypatch.setattr(devices, "Path", FakeCpuinfo)
    assert devices.cpu_has_native_bf16() is native


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu(monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("native", [True, False])
def test_explicit_dtypes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool) -> None:
    """An explicit dtype is honoured; half precision on a CPU that emulates it says how slow that is."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="lodestar.backbone.devices"):
        assert resolve_dtype("float32", cpu) == torch.float32
        assert not caplog.records
        assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
        assert resolve_dtype("float16", cpu) == torch.float16
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == (0 if native else 2)
    assert all("100x slower than float32" in m and "Use dtype auto" in m for m in warned)


def test_unknown_dtype_lists_valid_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown dtype 'fp8': valid are auto, float32, bfloat16, float16"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(InvalidInput, match="valid are auto"):
        load_backbone(BackboneConfig(model=str(bundled_gguf()), dtype="half", cache_dir=CACHE_DIR))


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidInput, match="unknown device 'tpu9': use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(InvalidInput, match="CUDA is not available"):
        resolve_device("cuda")
