"""The engine's entry points: blocking, async (with cancellation and deadlines), direct, info, and
the STS evaluation helper."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.modes import Encoded, ForwardSpec
from lodestar.embed.types import EmbedOptions
from lodestar.errors import DeadlineExceeded, InvalidInput

TEXTS = ["first text", "the second text is a bit longer", "third"]


class Gate:
    """Wraps the batcher's run function: records calls and can hold the batcher inside one."""

    def __init__(self, engine: EmbeddingEngine) -> None:
        self.real = engine.batcher._run
        self.calls: list[list[Encoded]] = []
        self.open = threading.Event()
        self.entered = threading.Event()
        engine.batcher._run = self

    def __call__(self, spec: ForwardSpec, items: list[Encoded]) -> torch.Tensor:
        self.calls.append(list(items))
        self.entered.set()
        assert self.open.wait(10)
        return self.real(spec, items)


def hold(engine: EmbeddingEngine) -> tuple[Gate, Future]:
    """Keep the batcher busy with a one-text request until `gate.open` is set."""
    gate = Gate(engine)
    blocker = engine.batcher.submit(ForwardSpec(), engine.prepare(["hold"], EmbedOptions()).items)
    assert gate.entered.wait(10)
    return gate, blocker


def test_embed_async_matches_blocking_embed(tiny_engine: EmbeddingEngine) -> None:
    opts = EmbedOptions(mode="prompteol")

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(tiny_engine.embed_async([t], opts) for t in TEXTS))
        return [r.vectors[0] for r in results]

    got = asyncio.run(main())
    expected = tiny_engine.embed(TEXTS, opts).vectors
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)


def test_embed_async_rejects_bad_input(tiny_engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInput, match="valid modes"):
        asyncio.run(tiny_engine.embed_async(["x"], EmbedOptions(mode="nope")))


def test_cancelled_async_caller_takes_its_work_out(tiny_engine: EmbeddingEngine) -> None:
    gate, blocker = hold(tiny_engine)

    async def main() -> None:
        task = asyncio.create_task(tiny_engine.embed_async(TEXTS, EmbedOptions()))
        while tiny_engine.batcher.queued == 0:  # prepared and queued behind the blocker
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    gate.open.set()
    blocker.result(timeout=10)
    tiny_engine.embed(["after"])  # a later request runs: the cancelled one was skipped
    assert len(gate.calls) == 2 and not any(len(c) == len(TEXTS) for c in gate.calls)
    assert tiny_engine.batcher.queued == 0 and tiny_engine.batcher.stats.dropped == 1


def test_deadline_passed_in_the_queue(tiny_engine: EmbeddingEngine) -> None:
    gate, blocker = hold(tiny_engine)
    result: dict[str, BaseException] = {}

    def call() -> None:
        try:
            tiny_engine.embed(TEXTS, EmbedOptions(), timeout=0.01)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["exc"] = exc

    t = threading.Thread(target=call)
    t.start()
    while tiny_engine.batcher.queued == 0:
        threading.Event().wait(0.005)
    threading.Event().wait(0.05)
    gate.open.set()
    t.join(10)
    blocker.result(timeout=10)
    assert isinstance(result.get("exc"), DeadlineExceeded)
    assert len(gate.calls) == 1  # only the blocker ran


def test_embed_direct_equals_batched(tiny_engine: EmbeddingEngine) -> None:
    for mode in ("mean", "echo"):
        opts = EmbedOptions(mode=mode)
        direct = tiny_engine.embed_direct(TEXTS, opts, batch_size=2)
        batched = tiny_engine.embed(TEXTS, opts)
        np.testing.assert_allclose(direct.vectors, batched.vectors, atol=1e-5)
        assert direct.token_counts == batched.token_counts


def test_info(tiny_engine: EmbeddingEngine) -> None:
    info = tiny_engine.info()
    assert info["model"] == "tiny-llama" and info["dimensions"] == 64 and info["num_layers"] == 4
    assert [m[0] for m in info["modes"]] == ["mean", "last", "prompteol", "echo", "token_prepend", "bidirectional"]
    assert info["dtypes"] == ["float32", "float16", "int8", "binary"]
    assert info["default_mode"] == "mean" and info["torch_dtype"] == "float32" and info["device"] == "cpu"


def test_sts_evaluation_on_a_small_file(tiny_engine: EmbeddingEngine, tmp_path: Path) -> None:
    from lodestar.embed.eval.sts import eval_sts, read_sts

    tsv = tmp_path / "sts.tsv"
    tsv.write_text(
        "sentence1\tsentence2\tscore\n"
        "a cat sleeps\ta cat is sleeping\t4.8\n"
        "a dog runs\tstocks fell today\t0.2\n"
        "a cat sleeps\tthe weather is nice\t0.5\n",
        encoding="utf-8",
    )
    s1, s2, gold = read_sts(tsv)
    assert s1[2] == "a cat sleeps" and gold.tolist() == [4.8, 0.2, 0.5]
    out = eval_sts(tiny_engine, tsv, EmbedOptions(mode="mean"), progress=False)
    assert out["pairs"] == 3 and out["texts"] == 5  # the repeated sentence is embedded once
    assert -1.0 <= out["spearman"] <= 1.0 and out["mode"] == "mean" and out["model"] == "tiny-llama"
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tscore\nx\ty\t1\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"missing \['sentence1', 'sentence2'\]"):
        read_sts(bad)
