"""Sentence splitting: exact offsets, and the hard cases (abbreviations, decimals, initials, quotes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.compress_ctx.sentences import split_sentences

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compress"


def texts(s: str) -> list[str]:
    return [x.text for x in split_sentences(s)]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Dr. Smith went to Washington. He arrived at 3.30 p.m. on Monday.",
            ["Dr. Smith went to Washington.", "He arrived at 3.30 p.m. on Monday."],
        ),
        (
            "J. R. R. Tolkien wrote it. It sold 150.5 million copies!",
            ["J. R. R. Tolkien wrote it.", "It sold 150.5 million copies!"],
        ),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        (
            "The U.S. Army won. It was in the U.S. The war ended.",
            ["The U.S. Army won.", "It was in the U.S.", "The war ended."],
        ),
        (
            "See Fig. 3 and No. 5 for details. Prices rose e.g. in Spain.",
            ["See Fig. 3 and No. 5 for details.", "Prices rose e.g. in Spain."],
        ),
        (
            "Is it? Yes (see the appendix). Wait... what? Fine.",
            ["Is it?", "Yes (see the appendix).", "Wait... what?", "Fine."],
        ),
        (
            "Apple Inc. The firm grew. Apple Inc. makes phones.",
            ["Apple Inc.", "The firm grew.", "Apple Inc. makes phones."],
        ),
        (
            "World War II. The war ended in 1945. 1946 was calm.",
            ["World War II.", "The war ended in 1945.", "1946 was calm."],
        ),
        ("Version 2.0.1 shipped.Node.js too. Done", ["Version 2.0.1 shipped.Node.js too.", "Done"]),
        ("Line one\nLine two. Three\n\n  Four.  ", ["Line one", "Line two.", "Three", "Four."]),
        ("George W. Bush met Mr. Blair in St. Louis.", ["George W. Bush met Mr. Blair in St. Louis."]),
        ("(It rained.) They stayed in.", ["(It rained.)", "They stayed in."]),
    ],
)
def test_cases(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


def test_offsets_map_back_exactly_on_real_passages() -> None:
    with open(FIXTURES / "qa.jsonl", encoding="utf-8") as f:
        passages = {json.loads(line)["context"] for line in f}
    for p in passages:
        sents = split_sentences(p)
        assert len(sents) >= 2
        prev = 0
        for s in sents:
            assert p[s.start : s.end] == s.text
            assert s.text == s.text.strip() and s.text
            assert s.start >= prev  # in order, not overlapping
            assert p[prev : s.start].strip() == ""  # nothing but whitespace is dropped
            prev = s.end
        assert p[prev:].strip() == ""


def test_empty_and_whitespace() -> None:
    assert split_sentences("") == []
    assert split_sentences("   \n\t ") == []
    assert texts("no punctuation at all") == ["no punctuation at all"]


def test_long_sentences_are_cut_with_exact_offsets() -> None:
    text = "alpha beta; " * 40 + "end."
    sents = split_sentences(text, max_chars=100)
    assert len(sents) > 1 and all(len(s.text) <= 100 for s in sents)
    assert all(text[s.start : s.end] == s.text for s in sents)
    assert " ".join(s.text for s in sents).split() == text.split()
