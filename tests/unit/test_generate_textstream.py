"""Incremental detokenization: the text and the stop decision do not depend on how the tokens are
split into pushes (one token per plain step, several per accepted speculative draft)."""

from __future__ import annotations

import pytest

from lodestar.generate.textstream import TextStream


def run(tokenizer, ids: list[int], stop: tuple[str, ...], sizes: list[int]) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    ts = TextStream(tokenizer, stop)
    out, i, stopped = [], 0, False
    for n in sizes:
        piece, stopped = ts.push(ids[i : i + n])
        out.append(piece)
        i += n
        if stopped:
            break
    if not stopped:
        out.append(ts.finish())
    return "".join(out), stopped


@pytest.mark.parametrize("stop", ["語", "b語", "語c"])
def test_stop_string_with_a_character_split_across_tokens(tokenizer, stop: str) -> None:  # type: ignore[no-untyped-def]
    ids = list(tokenizer("ab語cd", add_special_tokens=False)["input_ids"])
    assert len(ids) >= 4  # 語 is three byte tokens: decoded one by one it ends in U+FFFD first
    expected = "ab語cd"[: "ab語cd".index(stop)]
    for sizes in ([1] * len(ids), [len(ids)], [2] * len(ids), [1, 3, len(ids)]):
        assert run(tokenizer, ids, (stop,), sizes) == (expected, True), sizes


def test_split_character_is_held_back_until_complete(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = list(tokenizer("ab語", add_special_tokens=False)["input_ids"])
    ts = TextStream(tokenizer)
    pieces = [ts.push([t])[0] for t in ids]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) + ts.finish() == "ab語"
