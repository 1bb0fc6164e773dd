"""Faithfulness report for a generated summary: its content words that no passage supports.

A word is supported when its analysed form (lowercased, light plural stemming, as BM25 indexes it)
occurs in some passage. Stopwords and punctuation are ignored; numbers count. A cheap, lexical
signal of hallucination: paraphrases are flagged too, so read it as an upper bound.
"""

from __future__ import annotations

import re

from lodestar.compress_ctx.types import Faithfulness
from lodestar.text import analyze

_WORD = re.compile(r"[^\W_]+")


def faithfulness(summary: str, passages: list[str]) -> Faithfulness:
    """Content words of `summary` and, in order of first use, those absent from every passage."""
    support: set[str] = set()
    for p in passages:
        support.update(analyze(p))
    content = missing = 0
    unsupported: list[str] = []
    seen: set[str] = set()
    for m in _WORD.finditer(summary):
        word = m.group(0)
        terms = analyze(word)
        if not terms:
            continue  # a stopword
        content += 1
        if any(t not in support for t in terms):
            missing += 1
            if word.lower() not in seen:
                seen.add(word.lower())
                unsupported.append(word)
    return Faithfulness(content_words=content, unsupported_words=missing, unsupported=unsupported)
