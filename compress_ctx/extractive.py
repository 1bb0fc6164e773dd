"""Extractive compression (RECOMP's extractive compressor, zero-shot or with a trained adapter):
split the passages into sentences, score each against the query, keep the best within a token
budget and/or a count, and return them with their exact character spans.

Score = (1 - lexical_weight) * cosine(query, sentence) + lexical_weight * IDF coverage of the
query's terms by the sentence + passage_weight * the same coverage by the sentence's passage (a
sentence that says "they" still belongs to the passage that names the topic). The cosine comes
from the embedding engine with any mode/prompt/instruction/adapter; the lexical parts catch the
rare names and numbers a 135M embedder blurs. Only the `max_candidates` sentences with the best
lexical score are embedded (embedding costs about what reading costs on the same backbone), and
sentence vectors are cached (they do not depend on the query). Selective augmentation: when the best score is below a
threshold, no context at all is returned (and the decision says why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lodestar.cancel import checkpoint
from lodestar.compress_ctx.cache import VectorCache
from lodestar.compress_ctx.lexical import coverage_scores, terms
from lodestar.compress_ctx.sentences import split_sentences
from lodestar.compress_ctx.types import AUGMENT, ORDERS, SKIP, CompressResult, Span, join_passages
from lodestar.embedding import EmbedOptions, TextEmbedder
from lodestar.errors import InvalidInput

# Zero-shot defaults chosen on 200 SQuAD dev questions with BM25 top-5 passages (answer kept at a
# 15% token budget: dense prompteol alone 76%, lexical alone 87%, this mix 93% of the full context's).
DEFAULT_OPTIONS = EmbedOptions(mode="prompteol")
DEFAULT_LEXICAL_WEIGHT = 0.3
DEFAULT_PASSAGE_WEIGHT = 0.1
DEFAULT_MAX_CANDIDATES = 10
# A budget given as a ratio never drops below this many tokens: 15% of two short passages is a
# handful of tokens, too few for any sentence, and the compressor would keep a short irrelevant one.
MIN_RATIO_BUDGET = 32


def sentence_units(passage: str, max_chars: int = 1000, min_words: int = 0) -> list[tuple[int, int]]:
    """Sentence spans of `passage`; fragments of fewer than `min_words` words (a title line such as
    "Steam engine.") are joined to the next sentence (the last to the previous). Off by default:
    on SQuAD dev the longer units fit the budget worse than the fragments waste it."""
    spans = [(s.start, s.end) for s in split_sentences(passage, max_chars)]
    out: list[tuple[int, int]] = []
    pending: int | None = None  # start of a fragment waiting for the next sentence
    for a, b in spans:
        a = pending if pending is not None else a
        pending = None
        if len(passage[a:b].split()) < min_words:
            pending = a
            continue
        out.append((a, b))
    if pending is not None:
        if out:
            out[-1] = (out[-1][0], spans[-1][1])
        else:
            out.append((pending, spans[-1][1]))
    return out


@dataclass(frozen=True)
class Candidate:
    passage: int
    start: int
    end: int
    text: str
    tokens: int
    score: float
    dense: float  # cosine with the query
    lexical: float  # IDF coverage of the query by the sentence
    passage_lexical: float  # ... by its passage


class ExtractiveCompressor:
    """Scores sentences with an embedder (EmbeddingEngine or anything with .embed and .backbone)."""

    def __init__(
        self,
        embedder: TextEmbedder,
        *,
        lexical_weight: float = DEFAULT_LEXICAL_WEIGHT,
        passage_weight: float = DEFAULT_PASSAGE_WEIGHT,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        max_sentence_chars: int = 1000,
        min_sentence_words: int = 0,
        trim_best: bool = True,
        cache: VectorCache | None = None,
    ) -> None:
        if not 0.0 <= lexical_weight <= 1.0:
            raise InvalidInput(f"lexical_weight must be in [0, 1]; got {lexical_weight}")
        if passage_weight < 0.0 or max_candidates < 0:
            raise InvalidInput("passage_weight and max_candidates must be >= 0")
        self.embedder = embedder
        self.tokenizer = embedder.backbone.tokenizer
        self.lexical_weight = lexical_weight
        self.passage_weight = passage_weight
        self.max_candidates = max_candidates
        self.min_sentence_words = min_sentence_words
        self.trim_best = trim_best
        self.max_sentence_chars = max_sentence_chars
        self.cache = cache if cache is not None else VectorCache()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _step(self) -> int:
        limit = getattr(getattr(self.embedder, "config", None), "max_texts_per_request", 256)
        return int(limit) if isinstance(limit, int) and limit > 0 else 256

    def _vectors(self, texts: list[str], options: EmbedOptions) -> np.ndarray:
        """(N, D) unit vectors; cached ones are reused, the rest embedded in request-sized steps."""
        options = EmbedOptions(**{**options.__dict__, "normalize": True, "dtype": "float32", "truncate": True})
        found = self.cache.get_many(options, texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found) if v is None))
        fresh: dict[str, np.ndarray] = {}
        step = self._step()
        for i in range(0, len(missing), step):
            checkpoint()  # a cancelled call (lodestar.cancel) stops between embedding steps
            chunk = missing[i : i + step]
            vecs = np.asarray(self.embedder.embed(chunk, options).vectors, dtype=np.float32)  # (n, D)
            self.cache.put_many(options, chunk, vecs)
            fresh.update(zip(chunk, vecs))
        return np.stack([v if v is not None else fresh[t] for t, v in zip(texts, found)])  # (N, D)

    def candidates(
        self,
        query: str,
        passages: list[str],
        options: EmbedOptions | None = None,
        query_options: EmbedOptions | None = None,
    ) -> tuple[list[Candidate], int]:
        """(the scored candidate sentences in passage order, how many sentences the passages hold).

        Candidates are the `max_candidates` sentences of best lexical score (0: all of them)."""
        options = options or DEFAULT_OPTIONS
        query_options = query_options or options
        sents = [
            (i, a, b)
            for i, p in enumerate(passages)
            for a, b in sentence_units(p, self.max_sentence_chars, self.min_sentence_words)
        ]
        if not sents:
            return [], 0
        texts = [passages[i][a:b] for i, a, b in sents]
        lexical = coverage_scores(query, texts)  # (N,)
        per_passage = coverage_scores(query, passages) if self.passage_weight else np.zeros(len(passages), np.float32)
        plex = per_passage[[i for i, _, _ in sents]]  # (N,)
        prior = self.lexical_weight * lexical + self.passage_weight * plex  # (N,) the lexical part of the score
        keep = np.arange(len(sents))
        if self.max_candidates and len(sents) > self.max_candidates:
            keep = np.sort(np.argsort(-prior, kind="stable")[: self.max_candidates])
        kept_texts = [texts[j] for j in keep]
        if self.lexical_weight < 1.0:
            q = self._vectors([query], query_options)[0]  # (D,)
            dense = self._vectors(kept_texts, options) @ q  # (M,)
        else:
            dense = np.zeros(len(keep), np.float32)
        score = (1.0 - self.lexical_weight) * dense + prior[keep]  # (M,)
        counts = [len(ids) for ids in self.tokenizer(kept_texts, add_special_tokens=False)["input_ids"]]
        out = []
        for m, j in enumerate(keep):
            i, a, b = sents[j]
            out.append(
                Candidate(
                    i, a, b, texts[j], counts[m], float(score[m]), float(dense[m]), float(lexical[j]), float(plex[j])
                )
            )
        return out, len(sents)

    def assemble(self, chosen: list[Candidate], order: str) -> str:
        """Kept sentences as one context: passage order keeps a passage's sentences on one line."""
        if order == "score":
            return "\n".join(c.text for c in chosen)
        lines: list[str] = []
        last = -1
        for c in sorted(chosen, key=lambda c: (c.passage, c.start)):
            if c.passage == last:
                lines[-1] += " " + c.text
            else:
                lines.append(c.text)
            last = c.passage
        return "\n\n".join(lines)

    def trim(self, query: str, c: Candidate, budget: int) -> Candidate | None:
        """The window of at most `budget` tokens of `c` that covers the most query terms (earliest
        on ties), as a candidate with exact offsets; None when the budget is too small to bother."""
        if budget < 8:
            return None
        enc = self.tokenizer(c.text, add_special_tokens=False, return_offsets_mapping=True)
        offs = [(a, b) for a, b in enc["offset_mapping"] if b > a]
        wanted = set(terms(query))
        width = budget
        while width >= 8:
            best: tuple[int, int, int] | None = None  # (covered terms, start char, end char)
            for i in range(0, max(1, len(offs) - width + 1)):
                a, b = offs[i][0], offs[min(i + width, len(offs)) - 1][1]
                covered = len(wanted & set(terms(c.text[a:b])))
                if best is None or covered > best[0]:
                    best = (covered, a, b)
            assert best is not None
            _, a, b = best
            while a < b and c.text[a].isspace():
                a += 1
            text = c.text[a:b]
            n = self.count_tokens(text)
            if n <= budget:
                return Candidate(
                    c.passage, c.start + a, c.start + b, text, n, c.score, c.dense, c.lexical, c.passage_lexical
                )
            width -= max(1, n - budget)  # re-tokenised alone, the window grew: shrink and retry
        return None

    def select(
        self, query: str, ranked: list[Candidate], budget_tokens: int, top_n: int, order: str
    ) -> tuple[list[Candidate], str]:
        """Greedy by score: take a sentence when the assembled text stays within the budget. When
        the best sentence alone is longer than the budget, its best window is kept instead."""
        chosen: list[Candidate] = []
        seen: set[str] = set()
        text = ""
        if budget_tokens and self.trim_best and ranked and ranked[0].tokens > budget_tokens:
            cut = self.trim(query, ranked[0], budget_tokens)
            if cut is not None:
                ranked = [cut, *ranked[1:]]
        for c in ranked:
            if top_n and len(chosen) >= top_n:
                break
            if c.text in seen:  # the same sentence in two passages: once is enough
                continue
            if budget_tokens and c.tokens > budget_tokens:
                continue
            trial = self.assemble(chosen + [c], order)
            if budget_tokens and self.count_tokens(trial) > budget_tokens:
                continue
            chosen.append(c)
            seen.add(c.text)
            text = trial
        if order == "score":
            chosen.sort(key=lambda c: -c.score)
        else:
            chosen.sort(key=lambda c: (c.passage, c.start))
        return chosen, text

    def compress(
        self,
        query: str,
        passages: list[str],
        *,
        budget_tokens: int = 0,
        budget_ratio: float = 0.0,
        top_n: int = 0,
        order: str = "original",
        threshold: float | None = None,
        options: EmbedOptions | None = None,
        query_options: EmbedOptions | None = None,
    ) -> CompressResult:
        """Keep the best sentences within min(budget_tokens, max(MIN_RATIO_BUDGET, budget_ratio * tokens
        before)) and top_n (0 = no such limit); `threshold` set: skip all context when the best score is below it."""
        if order not in ORDERS:
            raise InvalidInput(f"unknown order {order!r}: valid are {', '.join(ORDERS)}")
        t0 = time.perf_counter()
        before = self.count_tokens(join_passages(passages))
        budget = budget_tokens
        if budget_ratio > 0:
            by_ratio = max(min(MIN_RATIO_BUDGET, before), int(budget_ratio * before))
            budget = min(budget, by_ratio) if budget else by_ratio
        cands, total = self.candidates(query, passages, options, query_options)
        ranked = sorted(cands, key=lambda c: -c.score)
        best = ranked[0].score if ranked else None
        if best is None:
            return CompressResult(
                "extractive",
                "",
                [],
                before,
                0,
                SKIP,
                None,
                threshold,
                "no sentences in the passages",
                time.perf_counter() - t0,
            )
        if threshold is not None and best < threshold:
            reason = f"best sentence score {best:.4f} is below the threshold {threshold:.4f}: no context"
            return CompressResult(
                "extractive", "", [], before, 0, SKIP, best, threshold, reason, time.perf_counter() - t0
            )
        chosen, text = self.select(query, ranked, budget, top_n, order)
        if not chosen:
            reason = f"no candidate sentence fits the budget of {budget} tokens (the shortest has {min(c.tokens for c in cands)})"
            return CompressResult(
                "extractive", "", [], before, 0, SKIP, best, threshold, reason, time.perf_counter() - t0
            )
        spans = [Span(c.passage, c.start, c.end, c.score) for c in chosen]
        reason = f"kept {len(chosen)} of {total} sentences ({len(cands)} scored)" + (
            f" within {budget} tokens" if budget else ""
        )
        return CompressResult(
            "extractive",
            text,
            spans,
            before,
            self.count_tokens(text),
            AUGMENT,
            best,
            threshold,
            reason,
            time.perf_counter() - t0,
        )
