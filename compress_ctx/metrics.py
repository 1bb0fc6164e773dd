"""SQuAD answer metrics: the official normalisation, exact match, token F1, answer-in-context."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and English articles, squeeze whitespace (SQuAD's evaluate-v2.0)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    """Best bag-of-tokens F1 against the gold answers."""
    return max((_f1(prediction, g) for g in golds), default=0.0)


def answer_in_context(context: str, golds: list[str]) -> float:
    """1.0 when some normalised gold answer occurs in the normalised context on word boundaries."""
    c = f" {normalize_answer(context)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in c for g in golds))
