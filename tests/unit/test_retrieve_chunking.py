"""Token-window chunking: spans with and without overlap, and the edge cases."""

from __future__ import annotations

import re

import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.chunking import chunk_spans

TEXT = "one two three four five six seven eight nine ten eleven"


def word_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word: the shape of a fast tokenizer's offset_mapping."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def words(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_windows_with_overlap() -> None:
    spans = chunk_spans(word_offsets(TEXT), size=4, overlap=1)
    assert words(TEXT, spans) == [
        "one two three four",
        "four five six seven",
        "seven eight nine ten",
        "ten eleven",  # last window ends at the last token; it is not shifted back
    ]


def test_windows_without_overlap_and_exact_fit() -> None:
    ten = " ".join(TEXT.split()[:10])
    assert words(ten, chunk_spans(word_offsets(ten), 5, 0)) == ["one two three four five", "six seven eight nine ten"]
    assert words(ten, chunk_spans(word_offsets(ten), 4, 1)) == [
        "one two three four",
        "four five six seven",
        "seven eight nine ten",
    ]  # no empty/duplicate tail
    assert len(chunk_spans(word_offsets(ten), 3, 2)) == 8  # step 1: starts 0..7, last is tokens 7..9


def test_single_window_cases() -> None:
    offsets = word_offsets(TEXT)
    assert chunk_spans(offsets, 0, 0) == [(0, len(TEXT))]  # size 0: no chunking
    assert chunk_spans(offsets, 0, 99) == [(0, len(TEXT))]  # overlap is irrelevant without chunking
    assert chunk_spans(offsets, 11, 3) == [(0, len(TEXT))]  # fits in one window
    assert chunk_spans(offsets, 50, 10) == [(0, len(TEXT))]


def test_no_tokens_and_special_tokens() -> None:
    assert chunk_spans([], 4, 1) == [(0, 0)]
    assert chunk_spans([(0, 0), (0, 0)], 4, 1) == [(0, 0)]  # only special tokens
    text = "  leading and trailing  "
    offsets = [(0, 0)] + word_offsets(text) + [(0, 0)]  # BOS/EOS report (0, 0)
    assert words(text, chunk_spans(offsets, 2, 0)) == ["leading and", "trailing"]


def test_subword_offsets_cover_whole_words() -> None:
    text = "tokenisation works"
    offsets = [(0, 5), (5, 9), (9, 12), (12, 18), (19, 24)]  # "token" "isat" "ion"... "works"
    assert words(text, chunk_spans(offsets, 3, 1)) == ["tokenisation", "ion works"]
    # a character split over two tokens reports the same span twice; spans still cover it once
    assert chunk_spans([(0, 3), (3, 4), (3, 4), (4, 6)], 2, 0) == [(0, 4), (3, 6)]


def test_invalid_arguments() -> None:
    offsets = word_offsets(TEXT)
    with pytest.raises(InvalidInput, match="chunk overlap 4 must be smaller than the chunk size 4"):
        chunk_spans(offsets, 4, 4)
    with pytest.raises(InvalidInput, match="chunk size must be an integer >= 0"):
        chunk_spans(offsets, -1, 0)
    with pytest.raises(InvalidInput, match="chunk overlap must be an integer >= 0"):
        chunk_spans(offsets, 4, -1)
    with pytest.raises(InvalidInput, match="start <= end"):
        chunk_spans([(5, 2)], 4, 0)
