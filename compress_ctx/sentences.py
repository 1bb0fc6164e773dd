"""Rule-based English sentence splitter that keeps exact character offsets.

Every sentence is a span [start, end) of the passage with `passage[start:end] == sentence.text`:
leading/trailing whitespace is left out, nothing inside is changed. A boundary is terminal
punctuation (. ! ? or an ellipsis), optionally followed by closing quotes or brackets, then
whitespace, then something that can start a sentence. A period does not end a sentence after a
title ("Dr."), an initial ("J. R. R."), a numbering word before a number ("No. 5"), or a dotted or
listed abbreviation ("e.g.", "U.S.", "Inc.") unless the next word is a common sentence opener.
Decimals ("3.14") and dotted names ("Node.js") never qualify: no whitespace follows their dot.
Line breaks are hard boundaries. Over-long sentences are cut again at semicolons, then at whitespace,
so one sentence never swallows a whole unpunctuated passage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Titles and name parts: always followed by a name, never end a sentence.
TITLES = frozenset(
    """mr mrs ms dr prof rev hon st sr jr mt ft gen col lt sgt capt cmdr adm maj gov pres sen rep
    messrs mme mlle msgr fr sra sr sta ste""".split()
)
# Words abbreviated before a number: "No. 5", "pp. 10-12", "Fig. 3".
NUMBERING = frozenset("no nos vol vols pp p fig figs ch chap sec art op ed eds para n".split())
# Abbreviations that usually sit mid-sentence but can end one ("... founded by Smith et al.").
ABBREVIATIONS = frozenset(
    """e.g i.e etc al vs cf approx ca c inc ltd co corp bros dept est univ assn jan feb mar apr jun
    jul aug sep sept oct nov dec mon tue tues wed thu thurs fri sat sun a.m p.m u.s u.k u.n e.u
    b.c a.d b.c.e c.e ph.d m.d b.a m.a d.c l.a n.y""".split()
)
# When one of these follows an ambiguous abbreviation, the abbreviation ended the sentence.
OPENERS = frozenset(
    """the a an this that these those it its he she they we i you his her their our in on at by for
    from with after before during however but and although though when while since as if there
    here then today many most some several one two each every all both no not yet""".split()
)

_CLOSERS = "\"'”’»)]}"
_OPENERS_CHARS = "\"'“‘«([{"
# Terminal punctuation run, closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"(?:[.!?]+|…)[" + re.escape(_CLOSERS) + r"]*(?=\s)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.\-']*)$")
_NEXT_WORD = re.compile(r"\s+[" + re.escape(_OPENERS_CHARS) + r"]*([^\s]+)")
_LINEBREAK = re.compile(r"[ \t]*\n\s*")


@dataclass(frozen=True)
class Sentence:
    start: int  # character offsets into the passage: passage[start:end] == text
    end: int
    text: str


def _starts_sentence(word: str) -> bool:
    """The next token can open a sentence: capital letter, digit, or a non-Latin letter."""
    first = word[0]
    return first.isupper() or first.isdigit() or (first.isalpha() and not first.isascii())


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    """Decide whether the punctuation run `match` (closers included) closes a sentence."""
    nxt = _NEXT_WORD.match(text, match.end())
    if nxt is None:
        return True  # only whitespace follows: end of passage
    word = nxt.group(1)
    punct = match.group(0).rstrip(_CLOSERS)
    if not _starts_sentence(word):
        return False  # "e.g. the", "... and", "?" inside a run-on quote
    if punct != ".":
        return True  # ! ? ... or a mix: a real end (ellipses before a capital too)
    before = _WORD_BEFORE.search(text, max(0, match.start() - 64), match.start())
    if before is None:
        return True  # "3." or ")." : numbers and brackets end sentences
    token = before.group(1)
    lower = token.lower().strip("'")
    bare = lower.rstrip(".")
    opener = word.strip(_CLOSERS + ".,;:").lower() in OPENERS
    if len(bare) == 1 and bare.isalpha():
        # An initial ("J. R. R. Tolkien", "George W. Bush"); "Malcolm X. He" splits on an opener.
        return opener
    if bare in TITLES:
        return False
    if bare in NUMBERING and word[0].isdigit():
        return False
    if bare in ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", bare):
        return opener  # "in the U.S. The ..." splits; "U.S. Army" does not
    return True


def _cut_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Split an over-long span at '; ' first, then at the last whitespace before the limit."""
    out: list[tuple[int, int]] = []
    while end - start > max_chars:
        window = text[start : start + max_chars]
        cut = window.rfind("; ")
        if cut > max_chars // 4:
            cut += 1  # keep the semicolon with the left part
        else:
            cut = max(window.rfind(" "), window.rfind("\t"))
            if cut <= 0:
                cut = max_chars  # one giant token: cut it anyway
        piece_end = start + cut
        out.append((start, piece_end))
        start = piece_end
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        out.append((start, end))
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(text: str, max_chars: int = 1000) -> list[Sentence]:
    """Sentences of `text` with exact offsets; whitespace-only text gives []."""
    spans: list[tuple[int, int]] = []
    blocks: list[tuple[int, int]] = []
    pos = 0
    for m in _LINEBREAK.finditer(text):
        blocks.append((pos, m.start()))
        pos = m.end()
    blocks.append((pos, len(text)))
    for b_start, b_end in blocks:
        block = text[:b_end]  # lookups past the block end must not see the next line
        cur = b_start
        for m in _BOUNDARY.finditer(block, b_start):
            if m.end() <= cur:
                continue
            if _is_boundary(block, m):
                spans.append((cur, m.end()))
                cur = m.end()
        spans.append((cur, b_end))
    out: list[Sentence] = []
    for a, b in spans:
        a, b = _trim(text, a, b)
        if b <= a:
            continue
        for x, y in _cut_long(text, a, b, max_chars) if max_chars > 0 else [(a, b)]:
            x, y = _trim(text, x, y)
            if y > x:
                out.append(Sentence(x, y, text[x:y]))
    return out
