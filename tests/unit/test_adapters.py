"""LoRA adapters on the tiny model: applied per request, disabled for requests without one, found by
name, least-recently-used unloaded, and never mixed within a batch."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodel import build_tiny

from lodestar.backbone import Backbone, BackboneConfig
from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.modes import Encoded, ForwardSpec
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

NAMES = ("alpha", "beta", "gamma")
TEXTS = ["hello world", "a slightly longer sentence about adapters"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """Three small random (non-zero) LoRA adapters for the tiny model, saved with peft."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(NAMES):
        model = build_tiny(tokenizer, seed=0).model
        torch.manual_seed(100 + i)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(root / name)
    (root / "not-an-adapter").mkdir()  # no adapter_config.json: not offered
    return root


@pytest.fixture
def bb(tokenizer, adapter_dir: Path) -> Backbone:  # type: ignore[no-untyped-def]
    """A fresh tiny backbone per test (loading adapters mutates the model), two adapters resident."""
    model = build_tiny(tokenizer, seed=0).model
    cfg = BackboneConfig(model="tiny", adapter_dirs=(adapter_dir,), max_resident_adapters=2)
    return Backbone.from_model(model, tokenizer, "tiny-llama", cfg)


@pytest.fixture
def eng(bb: Backbone) -> Iterator[EmbeddingEngine]:
    e = EmbeddingEngine(bb)
    yield e
    e.close()


def vecs(eng: EmbeddingEngine, adapter: str = "", mode: str = "mean") -> np.ndarray:
    return eng.embed(TEXTS, EmbedOptions(adapter=adapter, mode=mode, normalize=False)).vectors


def test_adapter_by_path_changes_vectors_and_disabling_restores_them(eng: EmbeddingEngine, adapter_dir: Path) -> None:
    base = vecs(eng)
    with_adapter = vecs(eng, str(adapter_dir / "alpha"))
    assert not np.allclose(base, with_adapter, atol=1e-3)
    np.testing.assert_allclose(vecs(eng), base, atol=1e-6)  # no adapter: the original model again
    np.testing.assert_allclose(vecs(eng, str(adapter_dir / "alpha")), with_adapter, atol=1e-6)
    # Direct (unbatched) path too.
    direct = eng.embed_direct(TEXTS, EmbedOptions(normalize=False)).vectors
    np.testing.assert_allclose(direct, base, atol=1e-6)


def test_names_that_differ_only_in_punctuation_keep_their_own_weights(
    tokenizer, adapter_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """peft's slot name came from the key with punctuation made "_" (and cut to its last 48 characters):
    "my-lora" and "my_lora" shared one slot, so loading the second overwrote the first's weights."""
    import shutil

    shutil.copytree(adapter_dir / "alpha", tmp_path / "my-lora")
    shutil.copytree(adapter_dir / "beta", tmp_path / "my_lora")
    cfg = BackboneConfig(model="tiny", adapter_dirs=(tmp_path,), max_resident_adapters=2)
    engine = EmbeddingEngine(Backbone.from_model(build_tiny(tokenizer, seed=0).model, tokenizer, "tiny-llama", cfg))
    try:
        dash = vecs(engine, "my-lora")
        vecs(engine, "my_lora")  # both resident now
        np.testing.assert_allclose(vecs(engine, "my-lora"), dash, atol=1e-6)
        assert not np.allclose(vecs(engine, "my_lora"), dash, atol=1e-3)
    finally:
        engine.close()


def test_adapter_by_name_from_the_search_dirs(eng: EmbeddingEngine, bb: Backbone, adapter_dir: Path) -> None:
    assert bb.adapters.available() == list(NAMES)
    assert bb.adapters.resolve("beta") == ("beta", adapter_dir / "beta")
    by_name = vecs(eng, "beta")
    by_path = vecs(eng, str(adapter_dir / "beta"))
    np.testing.assert_allclose(by_name, by_path, atol=1e-6)
    assert not np.allclose(by_name, vecs(eng, "alpha"), atol=1e-3)  # different adapters differ
    assert "beta" in eng.info()["adapters"]


def test_adapter_with_bidirectional_mode(eng: EmbeddingEngine) -> None:
    """LLM2Vec-style: the bidirectional mode takes an adapter."""
    base = vecs(eng, mode="bidirectional")
    tuned = vecs(eng, "gamma", mode="bidirectional")
    assert not np.allclose(base, tuned, atol=1e-3)
    np.testing.assert_allclose(vecs(eng, mode="bidirectional"), base, atol=1e-6)


def test_least_recently_used_adapter_is_unloaded(eng: EmbeddingEngine, bb: Backbone) -> None:
    first = {name: vecs(eng, name) for name in NAMES}  # max_resident_adapters=2
    assert bb.adapters.resident() == ["beta", "gamma"]
    peft_model = bb.adapters._peft
    assert len(peft_model.peft_config) == 2  # really deleted from the model, not just forgotten
    vecs(eng, "beta")  # beta becomes most recent
    again = vecs(eng, "alpha")  # reloads alpha, unloads gamma (least recent)
    assert bb.adapters.resident() == ["beta", "alpha"]
    assert len(peft_model.peft_config) == 2
    np.testing.assert_allclose(again, first["alpha"], atol=1e-6)
    np.testing.assert_allclose(vecs(eng, "gamma"), first["gamma"], atol=1e-6)
    assert bb.adapters.resident() == ["alpha", "gamma"]
    base_again = vecs(eng)
    fresh = build_tiny(bb.tokenizer, seed=0)
    fresh_engine = EmbeddingEngine(fresh)
    try:
        np.testing.assert_allclose(base_again, vecs(fresh_engine), atol=1e-6)
    finally:
        fresh_engine.close()


def test_unknown_adapter_lists_valid_names(eng: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput) as err:
        eng.embed(TEXTS, EmbedOptions(adapter="delta"))
    msg = str(err.value)
    assert "unknown adapter 'delta'" in msg and "[alpha, beta, gamma]" in msg
    assert "not-an-adapter" not in msg
    with pytest.raises(InvalidInput, match="valid names"):
        eng.embed(TEXTS, EmbedOptions(adapter="not-an-adapter"))


@pytest.mark.parametrize("name", ["a" * 300, "~no-such-user-here/adapter"])
def test_adapter_name_the_filesystem_refuses_is_unknown(eng: EmbeddingEngine, name: str) -> None:
    """A name over the filesystem's 255-byte limit, or ~user of an unknown user, used to escape
    resolve() as OSError / RuntimeError (INTERNAL); it is an unknown adapter like any other."""
    with pytest.raises(InvalidInput, match=r"valid names are \[alpha, beta, gamma\]"):
        eng.embed(TEXTS, EmbedOptions(adapter=name))
    assert vecs(eng).shape == (2, 64)  # still serving


def test_adapter_paths_can_be_turned_off(tokenizer, adapter_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """LODESTAR_ADAPTER_PATHS=false: names from the search folders only; a path, or a name that
    climbs out of the folders, is an unknown adapter (the message says why), and serving goes on."""
    cfg = BackboneConfig(model="tiny", adapter_dirs=(adapter_dir / "alpha",), adapter_paths=False)
    engine = EmbeddingEngine(Backbone.from_model(build_tiny(tokenizer, seed=0).model, tokenizer, "tiny-llama", cfg))
    try:
        for name in (str(adapter_dir / "beta"), "../beta", "~/beta", ".."):
            with pytest.raises(InvalidInput, match="names only, not paths: LODESTAR_ADAPTER_PATHS=false"):
                engine.embed(TEXTS, EmbedOptions(adapter=name))
        assert vecs(engine).shape == (2, 64)
    finally:
        engine.close()
    open_cfg = BackboneConfig(model="tiny", adapter_dirs=(adapter_dir,), adapter_paths=False)
    engine = EmbeddingEngine(
        Backbone.from_model(build_tiny(tokenizer, seed=0).model, tokenizer, "tiny-llama", open_cfg)
    )
    try:
        assert not np.allclose(vecs(engine, "beta"), vecs(engine))  # a name still works
    finally:
        engine.close()


def test_adapter_that_does_not_fit_the_model(eng: EmbeddingEngine, tmp_path: Path, adapter_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((adapter_dir / "alpha" / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    (broken / "adapter_model.safetensors").write_bytes(
        (adapter_dir / "alpha" / "adapter_model.safetensors").read_bytes()
    )
    base = vecs(eng)
    with pytest.raises(InvalidInput, match="cannot be loaded on this model"):
        eng.embed(TEXTS, EmbedOptions(adapter=str(broken)))
    np.testing.assert_allclose(vecs(eng), base, atol=1e-6)  # the model is unharmed
    assert not np.allclose(vecs(eng, "alpha"), base, atol=1e-3)


def test_forward_spec_carries_the_adapter(eng: EmbeddingEngine, adapter_dir: Path) -> None:
    plain = eng.prepare(TEXTS, EmbedOptions()).spec
    alpha = eng.prepare(TEXTS, EmbedOptions(adapter="alpha")).spec
    beta = eng.prepare(TEXTS, EmbedOptions(adapter="beta")).spec
    assert plain.adapter is None and alpha.adapter == "alpha" and beta.adapter == "beta"
    assert len({plain, alpha, beta}) == 3  # three batcher keys
    tp = eng.prepare(TEXTS, EmbedOptions(mode="token_prepend", adapter="alpha")).spec
    assert tp.adapter == "alpha" and tp.prepend is not None


def test_a_batch_never_mixes_adapters(eng: EmbeddingEngine) -> None:
    """Concurrent requests with different adapters: each forward runs one adapter, each request gets
    exactly what it gets alone."""
    adapters = ["", "alpha", "", "beta", "alpha", ""]
    expected = [vecs(eng, a) for a in adapters]  # one request at a time

    calls: list[tuple[ForwardSpec, list[Encoded]]] = []
    gate, entered = threading.Event(), threading.Event()
    real_run = eng.batcher._run

    def spy(spec: ForwardSpec, items: list[Encoded]) -> torch.Tensor:
        calls.append((spec, list(items)))
        entered.set()
        gate.wait(10)
        return real_run(spec, items)

    eng.batcher._run = spy
    blocker = eng.batcher.submit(ForwardSpec(), eng.prepare(["hold"], EmbedOptions()).items)
    assert entered.wait(10)  # the batcher is busy: everything below queues up together
    prepared = [eng.prepare(TEXTS, EmbedOptions(adapter=a, normalize=False)) for a in adapters]
    owner = {id(e): p.spec for p in prepared for e in p.items}
    futures = [eng.batcher.submit(p.spec, p.items) for p in prepared]
    gate.set()
    blocker.result(timeout=10)
    got = [eng.finish(p, f.result(timeout=30)).vectors for p, f in zip(prepared, futures)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-5)
    for spec, items in calls[1:]:
        assert {owner[id(e)] for e in items} == {spec}, "a batch mixed adapters"
    assert len(calls) == 1 + 3  # same-adapter requests were merged: none, alpha, beta


def test_model_is_left_without_adapter_outside_requests(eng: EmbeddingEngine, bb: Backbone, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Other users of the shared backbone call the model directly (not through `adapters.use`):
    once a request with an adapter is done, the model must be the base model again."""
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    with torch.inference_mode():
        before = bb.model(input_ids=ids).logits
    vecs(eng, "alpha")
    with torch.inference_mode():
        after = bb.model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
    with bb.adapters.use("alpha"), torch.inference_mode():
        assert not torch.allclose(bb.model(input_ids=ids).logits, before, atol=1e-4)


def test_memory_cap_unloads_least_recently_used(tokenizer, adapter_dir: Path) -> None:  # type: ignore[no-untyped-def]
    one = sum(f.stat().st_size for f in (adapter_dir / "alpha").glob("adapter_model.*"))
    cfg = BackboneConfig(
        model="tiny", adapter_dirs=(adapter_dir,), max_resident_adapters=10, max_adapter_bytes=int(one * 1.5)
    )
    bb = Backbone.from_model(build_tiny(tokenizer, seed=0).model, tokenizer, "tiny-llama", cfg)
    eng = EmbeddingEngine(bb)
    try:
        vecs(eng, "alpha")
        vecs(eng, "beta")  # two would pass the cap: alpha goes
        assert bb.adapters.resident() == ["beta"] and bb.adapters.resident_bytes == one
    finally:
        eng.close()
