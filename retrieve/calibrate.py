"""Self-calibrating hybrid fusion: a collection picks its own fusion from pseudo-queries drawn from its
documents, without labels, and `fusion=auto` (the default) searches with that choice.

How: a seeded sample of chunks; from each, a sentence of at least MIN_QUERY_WORDS words becomes a
query and its chunk the one relevant chunk, in two kinds. *Removed* (inverse cloze, Lee et al. 2019):
the sentence is taken out of the chunk, which is re-embedded and re-indexed in a sparse index over
the pool, so the lexical side gets no copied match: its worst case. *Kept*: the chunk as stored, the
query a verbatim part of it: the lexical side's best case. Real queries fall between (SQuAD's
questions borrow the answer sentence's words, Cranfield's hardly), so neither kind alone says how
they will rank: removed alone picked too much dense weight on SQuAD (0.869 vs BM25 0.884). Each side
ranks every pseudo-query against the pool (the collection's chunks, a seeded sample of POOL_CAP when
larger), and every candidate fusion (weighted and DBSF at alpha 0.0..1.0, DBSF with per-query
adaptivity, RRF) is scored by nDCG@10 of the target. A candidate's margin over the better side
alone is taken per query and at its lower confidence bound (mean - Z standard errors): with one
relevant chunk per query and a few dozen queries, a fusion that looks 0.015 better is often noise
(it was on CISI: chosen at +0.015 on the selection half, -0.028 on the held-out half). The choice has
the highest worst bound across the two kinds, so a fusion is chosen only where it wins reliably at
both extremes; otherwise the better side alone (weighted alpha 0 or 1) is. The queries are split in
two halves: the choice is made on the selection half; the held-out half reports how that choice (and
the one the same rule would make in hindsight) does on queries it did not see.

Cost: 2 forwards per pseudo-query (the query and its shortened chunk), PSEUDO_QUERIES of them, plus
building a sparse index over the pool; the document vectors already stored are reused. The work is
done in batches saved to `calibration.partial.npz`, so a calibration interrupted (server stopped)
resumes where it was, and the result is deterministic for a seed and a collection's contents.
Refresh: when the collection's chunks reach REFRESH_FACTOR times those at the last calibration. A
collection of fewer than MIN_CHUNKS chunks (or fewer than MIN_QUERIES usable sentences) is not
calibrated: it records why and uses FALLBACK.

One-line texts (STS-B's sentences, titles): where under MIN_USABLE_SHARE of the chunks examined have a
sentence to spare, neither kind can be drawn for most chunks, and no fixed weight suits every such
collection (on the 18 one-line-text runs in docs/results.md weighted 0.1 missed the target both where
the dense side was the better one and where it was useless). So the weight follows from how good the
dense side looks: each chunk of 2 * MIN_HALF_WORDS+ words is cut at its middle word, one half (seeded
choice) is the query, its whole chunk the relevant one, and each side alone ranks the pool; r = dense
nDCG@10 / sparse nDCG@10 on them gives weighted fusion at alpha = SHORT_SLOPE * (r - SHORT_FLOOR),
within 0..SHORT_MAX_ALPHA, to the nearest 0.1. The copied half favours the lexical side, but r still
ordered the sides as the real queries did (Spearman 0.86 with the real dense - BM25 gap on those 18
runs, which also fixed the three constants). Only where halves are too few too does the collection
take FALLBACK.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from lodestar.durable import write_atomic
from lodestar.embedding import Embedder
from lodestar.errors import InvalidInput
from lodestar.retrieve.bm25 import BM25Index
from lodestar.retrieve.collection import Collection
from lodestar.retrieve.fusion import dbsf, rrf, weighted
from lodestar.retrieve.impact import ImpactIndex
from lodestar.retrieve.prepare import SparseVec, embed_sparse, embed_texts
from lodestar.retrieve.types import SearchRequest

log = logging.getLogger(__name__)

FILE, PARTIAL = "calibration.json", "calibration.partial.npz"
PSEUDO_QUERIES = 200  # sampled chunks, half to choose on, half held out
MIN_CHUNKS = 64  # below this the collection is too small to calibrate: FALLBACK
MIN_QUERIES = 16  # usable pseudo-queries (chunks with a sentence to draw) needed
# Usable chunks among those examined, at least: below it the pseudo-queries describe a few atypical
# chunks (STS-B's one-sentence texts: 66 of 1,467 held a second sentence) and the inverse-cloze task
# is empty on the rest, so the choice would rest on the copied-sentence case alone, where the lexical
# side always wins.
MIN_USABLE_SHARE = 0.5
MIN_QUERY_WORDS = 4
# One-line texts (see the module docstring): each half of a cut chunk has at least MIN_HALF_WORDS words
# (6+ words: 89-96% of STS-B's sentences and Cranfield's titles); the dense weight rises from 0 at
# r = SHORT_FLOOR by SHORT_SLOPE per unit of r, up to SHORT_MAX_ALPHA.
MIN_HALF_WORDS = 3
SHORT_FLOOR, SHORT_SLOPE, SHORT_MAX_ALPHA = 0.5, 1.2, 0.6
POOL_CAP = 20_000  # chunks each pseudo-query is ranked against (a seeded sample beyond this)
REFRESH_FACTOR = 2.0  # recalibrate when the collection has grown to this many times its chunks
DEPTH = 100  # each side's ranking depth before fusion (as a search's HYBRID_DEPTH)
BATCH = 32  # pseudo-queries embedded per saved step
SEED = 0
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
# (fusion, alpha, adaptive) in order of preference on a tie: simpler first
CANDIDATES = (
    [("weighted", a, False) for a in ALPHAS] + [("dbsf", a, False) for a in ALPHAS] + [("dbsf", 0.5, True)]
) + [("rrf", 0.5, False)]
# Without a calibration (too small, or not yet): weighted, alpha 0.1, a small dense weight. Picked with
# the labels of every run measured (docs/results.md): it was at or above the better side on each of
# SQuAD, Cranfield and CISI (mean mode) and SQuAD and CISI (bidirectional-stsb); equal weights lost up
# to 0.12 (DBSF 0.5 on Cranfield) and RRF up to 0.25.
FALLBACK: dict[str, Any] = {"fusion": "weighted", "alpha": 0.1, "adaptive": False}
Z = 1.645  # standard errors below its mean margin a fusion's gain must still be positive (one-sided 95%)
METHOD = (
    "a sentence drawn from each sampled chunk is the query, the chunk its one relevant chunk, twice: with "
    "the sentence removed from the chunk (inverse cloze: re-embedded, re-indexed; the lexical side's worst "
    "case) and kept (its best case); chosen on the selection half: the highest worst lower confidence bound "
    "(mean - 1.645 standard errors) of the per-query margin over the better side alone, across the two"
)
SHORT_METHOD = (
    "one-line texts: half of each sampled chunk (cut at its middle word) is the query, the chunk as stored "
    f"its one relevant chunk; r = dense nDCG@10 / sparse nDCG@10 alone; weighted fusion at alpha = "
    f"{SHORT_SLOPE} * (r - {SHORT_FLOOR}) within 0..{SHORT_MAX_ALPHA}, to the nearest 0.1"
)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


def key(fusion: str, alpha: float, adaptive: bool) -> str:
    """A candidate's name in the evidence: 'weighted:0.3', 'dbsf:0.5', 'dbsf-adaptive:0.5', 'rrf'."""
    return "rrf" if fusion == "rrf" else f"{fusion}{'-adaptive' if adaptive else ''}:{alpha:.1f}"


def fuse(
    dense: list[tuple[Any, float]], sparse: list[tuple[Any, float]], fusion: str, alpha: float, adaptive: bool, k: int
) -> list[tuple[Any, float]]:
    """One fusion of two rankings by name (rrf | weighted | dbsf)."""
    if fusion == "rrf":
        return rrf([dense, sparse], k=k)
    if fusion == "dbsf":
        return dbsf(dense, sparse, alpha=alpha, adaptive=adaptive)
    return weighted(dense, sparse, alpha=alpha)


class DocRanked(Protocol):
    """One document in a ranking (search.Ranked, the Milvus backend's Scored): a dataclass."""

    @property
    def doc_id(self) -> str: ...
    @property
    def score(self) -> float: ...


R = TypeVar("R", bound=DocRanked)


def fuse_hybrid(dense: list[R], sparse: list[R], fusion: str, alpha: float, adaptive: bool, rrf_k: int) -> list[R]:
    """Hybrid: fuse two document rankings by name; each fused entry is the document's dense entry (else
    its sparse one: the reported chunk is the dense one when present) with the fused score and each
    side's own score (None where that side did not rank it)."""
    d = {r.doc_id: r for r in dense}
    s = {r.doc_id: r for r in sparse}
    fused = fuse(
        [(r.doc_id, r.score) for r in dense], [(r.doc_id, r.score) for r in sparse], fusion, alpha, adaptive, rrf_k
    )
    return [
        replace(  # type: ignore[type-var]  # R is a dataclass (both callers' types are)
            d.get(doc_id) or s[doc_id],
            score=float(score),
            dense=d[doc_id].score if doc_id in d else None,
            sparse=s[doc_id].score if doc_id in s else None,
        )
        for doc_id, score in fused
    ]


def resolve(request: SearchRequest, calibration: dict[str, Any] | None) -> tuple[str, float, bool]:
    """(fusion, alpha, adaptive) a hybrid search runs: the request's own, or for `auto` the collection's
    calibrated choice (FALLBACK when it has none)."""
    if request.fusion != "auto":
        return request.fusion, request.alpha, False
    chosen = (calibration or {}).get("choice") or FALLBACK
    return str(chosen["fusion"]), float(chosen["alpha"]), bool(chosen.get("adaptive", False))


def read(directory: Path) -> dict[str, Any] | None:
    """The stored calibration of a collection folder (None if there is none or it does not parse)."""
    try:
        return dict(json.loads((directory / FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def due(c: Collection) -> bool:
    """Whether `c` should (re)calibrate now: it has both sides, and no record or has grown past its mark."""
    if c.status != "ok" or c.closed or c.config is None or c.sparse is None or c.config.dense == "none":
        return False
    chunks = int(c.sparse.count)
    if c.calibration is None:
        return chunks > 0
    return chunks >= int(c.calibration.get("refresh_at_chunks", 0))


def _sentence(text: str, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random sentence of `text` of at least MIN_QUERY_WORDS words, leaving as many words beside it;
    -> its character span, None when there is none."""
    spans = [m.span() for m in _SENTENCE.finditer(text) if len(m.group().split()) >= MIN_QUERY_WORDS]
    total = len(text.split())
    spans = [(a, b) for a, b in spans if total - len(text[a:b].split()) >= MIN_QUERY_WORDS]
    if not spans:
        return None
    return spans[int(rng.integers(len(spans)))]


def _half(text: str, rng: np.random.Generator) -> tuple[int, int] | None:
    """One half of `text` cut at its middle word (which half: seeded), each at least MIN_HALF_WORDS
    words; -> its character span, None when the text is shorter."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if len(words) < 2 * MIN_HALF_WORDS:
        return None
    mid = len(words) // 2
    if rng.integers(2):
        return words[0][0], words[mid - 1][1]
    return words[mid][0], words[-1][1]


def short_alpha(ratio: float) -> float:
    """The dense weight for a one-line-text collection whose dense side ranks `ratio` times as well as
    its sparse side on half-chunk pseudo-queries."""
    return round(min(SHORT_MAX_ALPHA, max(0.0, SHORT_SLOPE * (ratio - SHORT_FLOOR))), 1)


def _fallback(reason: str, chunks: int, seed: int) -> dict[str, Any]:
    return {
        "choice": dict(FALLBACK),
        "fallback": True,
        "reason": reason,
        "chunks": chunks,
        "seed": seed,
        "refresh_at_chunks": max(MIN_CHUNKS, chunks + 1),
        "calibrated_at": time.time(),
    }


class Calibrator:
    """Calibrates collections: on demand (`calibrate`), or in a background thread after writes
    (`after_write`) when `background` is on. `close` stops running calibrations between batches
    (their partial work stays on disk and resumes)."""

    def __init__(self, embedder: Embedder, background: bool = False) -> None:
        self.embedder = embedder
        self.background = background
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def after_write(self, c: Collection) -> None:
        """Start a background calibration of `c` when one is due and none runs."""
        if not self.background or not due(c):
            return
        with self._lock:
            if self._stop.is_set() or (c.name in self._running and self._running[c.name].is_alive()):
                return
            t = threading.Thread(target=self._background, args=(c,), name=f"calibrate-{c.name}", daemon=True)
            self._running[c.name] = t
            t.start()

    def _background(self, c: Collection) -> None:
        try:
            self.calibrate(c)
        except Exception:
            log.exception(
                "collection %r: calibration failed (searches use the previous choice or the fallback)", c.name
            )

    def wait(self, timeout: float | None = None) -> None:
        """Wait for running background calibrations (tests, eval)."""
        for t in list(self._running.values()):
            t.join(timeout)

    def close(self) -> None:
        self._stop.set()
        self.wait(timeout=30.0)

    def calibrate(self, c: Collection, seed: int = SEED, queries: int = PSEUDO_QUERIES) -> dict[str, Any]:
        """Calibrate `c` now; stores and returns the record (choice, evidence, refresh mark)."""
        if c.config is not None and "none" in (c.config.dense, c.config.sparse):
            raise InvalidInput(
                f"collection {c.name!r} has dense={c.config.dense!r} and sparse={c.config.sparse!r}: "
                "only a collection with both sides has a hybrid fusion to calibrate"
            )
        pool = self._pool(c, seed, queries)
        if isinstance(pool, dict):
            return self._store(c, pool)
        ids, texts, vectors, targets, spans, unit = pool
        qtexts = [texts[t][a:b].strip() for t, (a, b) in zip(targets, spans)]
        # the chunks with their query taken out (the inverse-cloze kind); one-line texts have no such kind
        short = [texts[t][:a] + texts[t][b:] for t, (a, b) in zip(targets, spans)] if unit == "sentence" else None
        emb = self._embed(c, seed, ids, targets, qtexts, short)
        if emb is None:
            return c.calibration or {}
        qvecs, cvecs, qsparse, csparse = emb
        kept = (  # the query left in its chunk: the lexical side's best case
            self._dense_rank(c, qvecs, vectors, ids),
            self._sparse_rank(c, ids, texts, qtexts, qsparse, {}),
        )
        if short is None:  # one-line texts: the kept kind alone sets the dense weight
            return self._store(c, _short_record(ids, targets, *kept, seed))
        for i, t in enumerate(targets):  # the pool as the inverse-cloze queries see it: each target shortened
            vectors[t] = cvecs[i]
            texts[t] = short[i]
        removed = (
            self._dense_rank(c, qvecs, vectors, ids),
            self._sparse_rank(c, ids, texts, qtexts, qsparse, dict(zip(targets, csparse or []))),
        )
        record = self._choose(ids, targets, {"removed": removed, "kept": kept}, seed, len(ids))
        return self._store(c, record)

    # --- steps -----------------------------------------------------------------------------

    def _pool(self, c: Collection, seed: int, queries: int) -> Any:
        """Under the read lock: the pool's (ids, texts, vectors), the sampled targets with their query
        spans and the unit drawn (a sentence, else half a one-line chunk); or a fallback record when the
        collection is too small or its chunks too short for either unit."""
        rng = np.random.default_rng(seed)
        with c.lock.read():
            c.check_serving()
            assert c.store is not None
            parts = list(c.store.iter_chunks(c.dim))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)  # (N,)
        total = int(ids.size)
        if total < MIN_CHUNKS:
            return _fallback(f"too small to calibrate: {total} chunks, at least {MIN_CHUNKS} needed", total, seed)
        vectors = np.concatenate([p[1] for p in parts])  # (N, D)
        texts = [t for p in parts for t in p[2]]
        keep = np.sort(rng.choice(total, POOL_CAP, replace=False)) if total > POOL_CAP else np.arange(total)
        ids, vectors, texts = ids[keep], vectors[keep].copy(), [texts[i] for i in keep]
        order = rng.permutation(len(ids))
        reasons = []
        for unit, draw, what in (
            ("sentence", _sentence, f"a sentence of {MIN_QUERY_WORDS}+ words with as many left beside it"),
            ("half", _half, f"{2 * MIN_HALF_WORDS}+ words to cut in two halves"),
        ):
            targets, spans = [], []
            examined = 0
            for i in order:
                examined += 1
                span = draw(texts[i], rng)
                if span is not None:
                    targets.append(int(i))
                    spans.append(span)
                if len(targets) == queries:
                    break
            if len(targets) >= MIN_QUERIES and len(targets) >= MIN_USABLE_SHARE * examined:
                return ids, texts, vectors, targets, spans, unit
            reasons.append(f"only {len(targets)} of {examined} chunks examined hold {what}")
        return _fallback(
            "; ".join(reasons) + f" (at least {MIN_QUERIES} and {MIN_USABLE_SHARE:.0%} needed): pseudo-queries "
            "would describe the few chunks that do, not the collection",
            total,
            seed,
        )

    def _embed(
        self,
        c: Collection,
        seed: int,
        ids: np.ndarray,
        targets: list[int],
        qtexts: list[str],
        short: list[str] | None,
    ) -> tuple[np.ndarray, np.ndarray, list[SparseVec] | None, list[SparseVec] | None] | None:
        """Query and shortened-chunk vectors (and learned-sparse vectors; no chunks when `short` is None),
        BATCH queries at a time, each batch saved to the partial file so an interrupted calibration
        resumes; None if stopped."""
        assert c.config is not None
        learned = c.config.sparse == "learned"
        tag = f"{seed}:{len(ids)}:{ids[targets].tolist()}:{len(qtexts)}:{short is not None}"
        path = c.directory / PARTIAL
        done = _load_partial(path, tag)
        while len(done["q"]) < len(qtexts):
            if self._stop.is_set() or c.closed:
                return None
            at = len(done["q"])
            qb, cb = qtexts[at : at + BATCH], (short or [])[at : at + BATCH]
            done["q"] += list(embed_texts(self.embedder, c.config, qb, c.dim, query=True))
            if cb:
                done["c"] += list(embed_texts(self.embedder, c.config, cb, c.dim, query=False))
            if learned:
                done["qs"] += embed_sparse(self.embedder, c.config, qb, query=True)
                if cb:
                    done["cs"] += embed_sparse(self.embedder, c.config, cb, query=False)
            _save_partial(path, tag, done)
        qvecs = np.asarray(done["q"], dtype=np.float32).reshape(len(qtexts), c.dim)  # (Q, D)
        cvecs = np.asarray(done["c"], dtype=np.float32).reshape(-1, c.dim)  # (Q, D), or (0, D) without chunks
        return qvecs, cvecs, (done["qs"] if learned else None), (done["cs"] if learned else None)

    def _dense_rank(
        self, c: Collection, qvecs: np.ndarray, vectors: np.ndarray, ids: np.ndarray
    ) -> list[list[tuple[int, float]]]:
        """Exact dense ranking of the pool per pseudo-query (the collection's metric)."""
        assert c.config is not None
        if c.config.metric == "l2":
            scores = -((qvecs**2).sum(1)[:, None] - 2.0 * qvecs @ vectors.T + (vectors**2).sum(1)[None, :])  # (Q, N)
        else:
            scores = qvecs @ vectors.T  # (Q, N)
        depth = min(DEPTH, scores.shape[1])
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]  # (Q, depth)
        out = []
        for row, cand in zip(scores, top):
            order = cand[np.argsort(-row[cand], kind="stable")]
            out.append([(int(ids[j]), float(row[j])) for j in order])
        return out

    def _sparse_rank(
        self,
        c: Collection,
        ids: np.ndarray,
        texts: list[str],
        qtexts: list[str],
        qsparse: list[SparseVec] | None,
        replace: dict[int, SparseVec],
    ) -> list[list[tuple[int, float]]]:
        """The collection's kind of sparse index built over the pool, searched; a learned-sparse pool
        takes the stored vectors with those of `replace` (pool position -> vector) swapped in."""
        assert c.config is not None and c.store is not None
        if qsparse is None:
            bm25 = BM25Index()
            bm25.add(ids, texts)
            return bm25.search(qtexts, DEPTH)
        with c.lock.read():
            c.check_serving()
            vecs = c.store.chunk_sparse(ids, reader=True)
        for t, v in replace.items():
            vecs[t] = v
        impact = ImpactIndex()
        impact.add(ids, vecs)
        return impact.search(qsparse, DEPTH, idf=c.config.query_idf)

    def _choose(
        self,
        ids: np.ndarray,
        targets: list[int],
        kinds: dict[str, tuple[list[list[tuple[int, float]]], list[list[tuple[int, float]]]]],
        seed: int,
        pool: int,
    ) -> dict[str, Any]:
        """Score every candidate on both kinds of pseudo-query and both halves. On the selection half,
        per kind, a candidate's margin is its per-query nDCG@10 minus that of the kind's better side
        alone, taken at its lower confidence bound (mean - Z standard errors); the choice has the highest
        worst bound across the kinds (a fusion must win reliably, not by noise, at both extremes), ties
        to the higher mean margin, then to the simpler candidate."""
        half = len(targets) // 2
        names = [key(*cand) for cand in CANDIDATES]
        gains: dict[str, dict[str, np.ndarray]] = {}
        for kind, (dense, sparse) in kinds.items():
            gains[kind] = {}
            for name, (fusion, alpha, adaptive) in zip(names, CANDIDATES):
                row = [
                    _ndcg10(fuse(d, s, fusion, alpha, adaptive, 60), int(ids[t]))
                    for t, d, s in zip(targets, dense, sparse)
                ]
                gains[kind][name] = np.asarray(row)  # (Q,)
        parts = {"selection": slice(0, half), "held_out": slice(half, len(targets))}

        def bound(kind: str, name: str, part: str) -> tuple[float, float]:
            """(mean, lower bound) of the candidate's margin over the kind's better side alone."""
            g, at = gains[kind], parts[part]
            side = max(("weighted:1.0", "weighted:0.0"), key=lambda n: float(g[n][at].mean()))
            diff = g[name][at] - g[side][at]  # (q,)
            se = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
            return float(diff.mean()), float(diff.mean()) - Z * se

        def pick(part: str) -> int:
            rank = []
            for i, n in enumerate(names):
                b = [bound(kind, n, part) for kind in gains]
                rank.append((round(min(lo for _, lo in b), 6), round(float(np.mean([m for m, _ in b])), 6), -i))
            return max(range(len(names)), key=lambda i: rank[i])

        best, hindsight = pick("selection"), pick("held_out")
        fusion, alpha, adaptive = CANDIDATES[best]
        scores = {
            kind: {n: {p: round(float(g[n][at].mean()), 4) for p, at in parts.items()} for n in names}
            for kind, g in gains.items()
        }

        def summary(name: str) -> dict[str, Any]:
            return {
                "name": name,
                **{kind: scores[kind][name] for kind in scores},
                "worst_lower_bound": {p: round(min(bound(k, name, p)[1] for k in gains), 4) for p in parts},
            }

        return {
            "choice": {"fusion": fusion, "alpha": alpha, "adaptive": adaptive},
            "fallback": False,
            "method": METHOD,
            "pseudo_queries": len(targets),
            "selection": half,
            "held_out": len(targets) - half,
            "pool_chunks": pool,
            "seed": seed,
            "dense_alone": {kind: scores[kind]["weighted:1.0"] for kind in scores},
            "sparse_alone": {kind: scores[kind]["weighted:0.0"] for kind in scores},
            "chosen": summary(names[best]),
            "best_held_out": summary(names[hindsight]),
            "scores": scores,
        }

    def _store(self, c: Collection, record: dict[str, Any]) -> dict[str, Any]:
        """Write the record beside the collection's store (atomically) and use it from now on."""
        chunks = int(record.get("chunks", record.get("pool_chunks", 0)))
        if not record.get("fallback"):
            with c.lock.read():
                chunks = int(c.sparse.count) if c.sparse is not None else chunks
            record |= {
                "chunks": chunks,
                "refresh_at_chunks": int(math.ceil(chunks * REFRESH_FACTOR)),
                "calibrated_at": time.time(),
            }
        with c.lock.read():
            c.check_open()
            write_atomic(c.directory / FILE, json.dumps(record, indent=1).encode())
            (c.directory / PARTIAL).unlink(missing_ok=True)
            c.calibration = record
        log.info("collection %r: fusion auto = %s (%s)", c.name, record["choice"], record.get("reason", "calibrated"))
        return record


def _ndcg10(ranked: list[tuple[int, float]], target: int) -> float:
    """nDCG@10 of a ranking of (id, score) with one relevant id."""
    top = [i for i, _ in ranked[:10]]
    return 1.0 / math.log2(top.index(target) + 2) if target in top else 0.0


def _short_record(
    ids: np.ndarray,
    targets: list[int],
    dense: list[list[tuple[int, float]]],
    sparse: list[list[tuple[int, float]]],
    seed: int,
) -> dict[str, Any]:
    """One-line texts: the dense weight from how each side alone ranks the half-chunk pseudo-queries."""
    d = float(np.mean([_ndcg10(r, int(ids[t])) for r, t in zip(dense, targets)]))
    s = float(np.mean([_ndcg10(r, int(ids[t])) for r, t in zip(sparse, targets)]))
    ratio = d / s if s > 0 else math.inf
    alpha = short_alpha(ratio)
    return {
        "choice": {"fusion": "weighted", "alpha": alpha, "adaptive": False},
        "fallback": False,
        "unit": "half",
        "method": SHORT_METHOD,
        "pseudo_queries": len(targets),
        "pool_chunks": len(ids),
        "seed": seed,
        "dense_alone": round(d, 4),
        "sparse_alone": round(s, 4),
        "ratio": round(ratio, 4),
    }


def _load_partial(path: Path, tag: str) -> dict[str, Any]:
    """Vectors a stopped calibration already computed, if it was this same calibration (`tag`)."""
    empty: dict[str, Any] = {"q": [], "c": [], "qs": [], "cs": []}
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["tag"]) != tag:
                return empty
            out: dict[str, Any] = {"q": list(z["q"]), "c": list(z["c"])}
            for name in ("qs", "cs"):
                offsets = z[f"{name}_offsets"]
                terms, weights = z[f"{name}_terms"], z[f"{name}_weights"]
                out[name] = [(terms[a:b], weights[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
            return out
    except (OSError, KeyError, ValueError):
        return empty


def _save_partial(path: Path, tag: str, done: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {"tag": np.array(tag), "q": np.asarray(done["q"]), "c": np.asarray(done["c"])}
    for name in ("qs", "cs"):
        vecs: list[SparseVec] = done[name]
        arrays[f"{name}_offsets"] = np.cumsum([0] + [len(t) for t, _ in vecs]).astype(np.int64)
        arrays[f"{name}_terms"] = np.concatenate([t for t, _ in vecs]) if vecs else np.empty(0, np.int64)
        arrays[f"{name}_weights"] = np.concatenate([w for _, w in vecs]) if vecs else np.empty(0, np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    write_atomic(path, buf.getvalue())
