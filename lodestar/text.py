"""The shared text analyzer: words, English stop words and light plural stemming.

BM25 indexes what `analyze` returns, and compression's lexical scores and faithfulness report read
words the same way; it lives at the root so any engine may import it (DESIGN.md, dependency
direction) without importing retrieval.
"""

from __future__ import annotations

import re

# Common English function words (articles, pronouns, auxiliaries, prepositions, conjunctions).
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves s t don shall may might must also yet
    ever us let upon whether either neither via per within without across onto among although
    though unless since
    """.split()
)

_TOKEN = re.compile(r"[^\W_]+")  # runs of letters/digits in any script; "_" separates like punctuation


def stem(word: str) -> str:
    """A light plural stripper: books->book, queries->query, boxes->box, caches/cache->cach.

    Deliberately modest (no derivational suffixes); queries and documents go through the same
    function, so an odd stem ("cach") still matches both forms of its word.
    """
    if len(word) <= 3:
        return word
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        if word.endswith("ies") and len(word) > 4 and not word.endswith(("eies", "aies")):
            return word[:-3] + "y"
        if word.endswith(("sses", "ches", "shes", "xes")):
            return word[:-2]
        word = word[:-1]
    if word.endswith(("che", "she", "xe")):  # cache/caches, niche/niches: meet at "cach", "nich"
        return word[:-1]
    return word


_cache: dict[str, str | None] = {}


def _term(token: str) -> str | None:
    """Stem of a lowercased token, None for a stopword (memoised: vocabularies are small)."""
    found = _cache.get(token, "")
    if found != "":
        return found
    value = None if token in STOPWORDS else stem(token)
    if len(_cache) < 1_000_000:
        _cache[token] = value
    return value


def analyze(text: str) -> list[str]:
    """Lowercase, split on non-alphanumerics, drop English stopwords, strip plurals (see `stem`)."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        term = _term(token)
        if term is not None:
            out.append(term)
    return out
