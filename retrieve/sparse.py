"""BM25 sparse retrieval: an incremental inverted index scored with numpy (words from lodestar.text).

The index is a small log-structured merge of immutable CSR segments (term -> postings of
(slot, tf)): each `add` writes one segment and equal-sized neighbours are merged, so there are
O(log N) segments and every posting is rewritten O(log N) times. A removed document only flips its
slot's live bit; merges drop its postings, and a full compaction renumbers slots once dead slots
outnumber live ones. A query touches only the postings of its own terms (no loop over documents).

Scoring is Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) and
tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)), with N, df and avglen over live documents.
A term repeated in the query counts once per occurrence (as rank_bm25 and bm25s do).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.framing import frame, unframe
from lodestar.retrieve.ids import as_ids, member
from lodestar.text import analyze

_MAGIC = b"LSBM25\x00\x01"
_FORMAT = 1


def idf_weight(n: int, df: int) -> float:
    """Lucene's BM25 idf of a term in `df` of `n` documents: ln(1 + (n - df + 0.5) / (df + 0.5))."""
    return np.float64(np.log1p((n - df + 0.5) / (df + 0.5)))  # a numpy scalar keeps float32 weights' products in float64


@dataclass
class _Segment:
    """Immutable postings in CSR form: postings of terms[i] are slots/tfs[starts[i]:starts[i+1]]."""

    terms: np.ndarray  # (T,) int32, sorted unique term ids
    starts: np.ndarray  # (T + 1,) int64
    slots: np.ndarray  # (P,) int32, ascending within a term
    tfs: np.ndarray  # (P,) float32

    @property
    def size(self) -> int:
        """Postings held."""
        return int(self.slots.size)

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(slots, tfs) of one term, or None when absent."""
        i = self._row(term)
        if i < 0:
            return None
        lo, hi = self.starts[i], self.starts[i + 1]
        return self.slots[lo:hi], self.tfs[lo:hi]

    def _row(self, term: int) -> int:
        """Index of `term` in terms, or -1."""
        i = int(np.searchsorted(self.terms, term))
        return i if i < self.terms.size and self.terms[i] == term else -1

    @cached_property
    def maxes(self) -> np.ndarray:
        """(T,) float32 largest weight in each term's postings (dead ones included: an upper bound)."""
        return np.maximum.reduceat(self.tfs, self.starts[:-1]) if self.terms.size else np.empty(0, dtype=np.float32)

    def bound(self, term: int) -> tuple[float, int]:
        """(largest weight, postings) of one term here; (0, 0) when absent. Costs one binary search."""
        i = self._row(term)
        return (0.0, 0) if i < 0 else (float(self.maxes[i]), int(self.starts[i + 1] - self.starts[i]))


def _csr(terms: np.ndarray, slots: np.ndarray, tfs: np.ndarray) -> _Segment:
    """Segment from postings already sorted by (term, slot)."""
    uniq, first = np.unique(terms, return_index=True)
    starts = np.append(first, terms.size).astype(np.int64)
    return _Segment(uniq.astype(np.int32), starts, slots.astype(np.int32), tfs.astype(np.float32))


class _Postings:
    """The inverted-index machinery shared by BM25 and learned-sparse (impact) indexes: slots for
    int64 ids, live bits, log-structured CSR segments of (slot, weight) postings per term."""

    def __init__(self) -> None:
        self._segments: list[_Segment] = []
        self._slot_ids = np.empty(0, dtype=np.int64)  # (S,) slot -> id
        self._slot_len = np.empty(0, dtype=np.int32)  # (S,) per-document length (BM25: analysed tokens)
        self._live = np.empty(0, dtype=bool)  # (S,)
        self._nslots = 0
        self._keys = np.empty(0, dtype=np.int64)  # (N,) sorted live ids
        self._key_slots = np.empty(0, dtype=np.int64)  # (N,) slot of each key
        self._df_cache: dict[int, int] = {}  # term -> live document frequency, while dead slots exist

    @property
    def count(self) -> int:
        """Live documents."""
        return int(self._keys.size)

    def ids(self) -> np.ndarray:
        """(N,) sorted live ids."""
        return self._keys.copy()

    def _check_new(self, ids: np.ndarray, n: int, what: str) -> None:
        if n != ids.size:
            raise InvalidInput(f"got {ids.size} ids for {n} {what}; they must match")
        if np.unique(ids).size != ids.size:
            raise InvalidInput("ids repeat within one add; each id may appear once")
        present = member(self._keys, ids)
        if present.any():
            raise InvalidInput(f"id {int(ids[present][0])} is already in the index; remove it before adding it again")

    def _add_postings(self, ids: np.ndarray, lengths: np.ndarray, doc: np.ndarray, terms: np.ndarray,
                      weights: np.ndarray) -> None:
        """New slots for `ids`; postings (doc index into ids, term, weight), one per (doc, term)."""
        self._df_cache.clear()
        base = self._nslots
        self._grow(base + ids.size)
        self._slot_ids[base : base + ids.size] = ids
        self._slot_len[base : base + ids.size] = lengths
        self._live[base : base + ids.size] = True
        self._nslots = base + ids.size
        order = np.argsort(ids, kind="stable")
        where = np.searchsorted(self._keys, ids[order])
        self._keys = np.insert(self._keys, where, ids[order])
        self._key_slots = np.insert(self._key_slots, where, base + order)
        if terms.size:
            by = np.lexsort((doc, terms))  # by term, then slot ascending
            self._segments.append(_csr(terms[by], base + doc[by], weights[by]))
            self._merge_tail()

    def _kill(self, ids: np.ndarray) -> np.ndarray:
        """Mark ids dead (unknown ones ignored); -> their slots."""
        self._df_cache.clear()
        ids = np.unique(as_ids(ids))
        hit = ids[member(self._keys, ids)]
        if hit.size == 0:
            return np.empty(0, dtype=np.int64)
        where = np.searchsorted(self._keys, hit)
        slots = self._key_slots[where]
        self._live[slots] = False
        self._keys = np.delete(self._keys, where)
        self._key_slots = np.delete(self._key_slots, where)
        return slots

    def _forget(self, slots: np.ndarray) -> None:
        """Subclass hook: `slots` just died (BM25 keeps its total length)."""

    def remove(self, ids: np.ndarray) -> int:
        """Delete ids (unknown ones are ignored); returns how many were live."""
        slots = self._kill(ids)
        self._forget(slots)
        dead = self._nslots - self.count
        if dead > max(1024, self.count):
            self._compact()
        return int(slots.size)

    def _mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """(S,) bool of the allowed live slots, or None for no filter."""
        if allowed is None:
            return None
        allowed = np.unique(as_ids(allowed))
        mask = np.zeros(self._nslots, dtype=bool)  # (S,)
        mask[self._key_slots[np.searchsorted(self._keys, allowed[member(self._keys, allowed)])]] = True
        return mask

    def _gather(self, term: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """(slots, weights) of one term's live (and allowed) postings, and its live document frequency."""
        found = [p for p in (seg.postings(term) for seg in self._segments) if p is not None]
        if not found:
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32), 0
        slots = np.concatenate([p[0] for p in found])  # (P,)
        weights = np.concatenate([p[1] for p in found])
        live = self._live[slots]
        df = int(live.sum())
        keep = live & mask[slots] if mask is not None else live
        return slots[keep], weights[keep], df

    def _top(self, slots: list[np.ndarray], scores: list[np.ndarray], k: int) -> list[tuple[int, float]]:
        """Sum per slot the contributions (slots, scores) and keep the k best (ties by smaller id)."""
        if not slots:
            return []
        flat = np.concatenate(slots)  # (P,) a slot repeats once per matching term
        weights = np.concatenate(scores).astype(np.float64)
        if 8 * flat.size > self._nslots:  # many postings: a dense accumulator beats sorting them
            dense = np.bincount(flat, weights=weights, minlength=self._nslots)  # (S,)
            touched = np.zeros(self._nslots, dtype=bool)
            touched[flat] = True
            cand = np.flatnonzero(touched)
            totals = dense[cand]
        else:
            cand, inverse = np.unique(flat, return_inverse=True)  # (C,)
            totals = np.bincount(inverse, weights=weights)  # (C,)
        return self._best(cand, totals, k)

    def _best(self, cand: np.ndarray, totals: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k best of candidate slots with their total scores, as (id, score), ties by smaller id."""
        ids = self._slot_ids[cand]
        if k < cand.size:
            kth = np.partition(totals, cand.size - k)[cand.size - k]
            top = np.flatnonzero(totals >= kth)  # ties with the k-th all survive the cut
            ids, totals = ids[top], totals[top]
        order = np.lexsort((ids, -totals))[:k]
        return [(int(i), float(s)) for i, s in zip(ids[order], totals[order])]

    # ------------------------------------------------------------------ segment maintenance

    def _grow(self, size: int) -> None:
        """Make room for `size` slots (amortised doubling)."""
        if size <= self._slot_ids.size:
            return
        cap = max(size, 2 * self._slot_ids.size, 1024)
        for name, dtype in (("_slot_ids", np.int64), ("_slot_len", np.int32), ("_live", bool)):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=dtype)
            new[: old.size] = old
            setattr(self, name, new)

    def _merge_tail(self) -> None:
        """Merge the newest segments while the newer one is at least half the older (log-many remain)."""
        while len(self._segments) > 1 and 2 * self._segments[-1].size >= self._segments[-2].size:
            newer = self._segments.pop()
            older = self._segments.pop()
            self._segments.append(self._merge([older, newer]))

    def _merge(self, segments: list[_Segment], remap: np.ndarray | None = None) -> _Segment:
        """One segment from several (oldest first), without dead postings; `remap` renumbers slots."""
        terms = np.concatenate([np.repeat(s.terms, np.diff(s.starts)) for s in segments])  # (P,)
        slots = np.concatenate([s.slots for s in segments])
        tfs = np.concatenate([s.tfs for s in segments])
        keep = self._live[slots]
        terms, slots, tfs = terms[keep], slots[keep], tfs[keep]
        if remap is not None:
            slots = remap[slots]
        order = np.argsort(terms, kind="stable")  # older segments hold smaller slots: stays sorted
        return _csr(terms[order], slots[order], tfs[order])

    def _compact_slots(self) -> _Segment:
        """Renumber live slots 0..N-1 in their old order; -> all postings merged into one segment
        (which the caller installs)."""
        live_slots = np.flatnonzero(self._live[: self._nslots])  # (N,)
        remap = np.full(max(self._nslots, 1), -1, dtype=np.int64)
        remap[live_slots] = np.arange(live_slots.size)
        merged = self._merge(self._segments, remap) if self._segments else _csr(*(np.empty(0),) * 3)
        self._slot_ids = self._slot_ids[live_slots].copy()
        self._slot_len = self._slot_len[live_slots].copy()
        self._live = np.ones(live_slots.size, dtype=bool)
        self._nslots = int(live_slots.size)
        order = np.argsort(self._slot_ids, kind="stable")
        self._keys = self._slot_ids[order]
        self._key_slots = order.astype(np.int64)
        return merged

    def _compact(self) -> None:
        merged = self._compact_slots()
        self._segments = [merged] if merged.size else []


class BM25Index(_Postings):
    """Incremental BM25 over int64 ids; filters restrict scoring to allowed ids before ranking."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        if not (isinstance(k1, (int, float)) and k1 >= 0):
            raise InvalidInput(f"BM25 k1 must be a number >= 0; got {k1!r}")
        if not (isinstance(b, (int, float)) and 0 <= b <= 1):
            raise InvalidInput(f"BM25 b must be between 0 and 1; got {b!r}")
        super().__init__()
        self.k1 = float(k1)
        self.b = float(b)
        self._vocab: dict[str, int] = {}
        self._total_len = 0  # tokens over live documents

    # ------------------------------------------------------------------ writes

    def add(self, ids: np.ndarray, texts: list[str]) -> None:
        """Index texts under new ids; an id already present must be removed first."""
        ids = as_ids(ids)
        if not all(isinstance(text, str) for text in texts):
            raise InvalidInput("texts must be strings")
        self._check_new(ids, len(texts), "texts")
        if ids.size == 0:
            return
        vocab = self._vocab
        docs = [[vocab.setdefault(t, len(vocab)) for t in analyze(text)] for text in texts]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))  # (B,)
        flat = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lengths.sum()))  # (T,)
        self._total_len += int(lengths.sum())
        width = max(len(vocab), 1)
        doc = np.repeat(np.arange(ids.size, dtype=np.int64), lengths)  # (T,)
        pairs, tf = np.unique(doc * width + flat, return_counts=True)  # one posting per (doc, term)
        self._add_postings(ids, lengths, pairs // width, pairs % width, tf.astype(np.float32))

    def _forget(self, slots: np.ndarray) -> None:
        self._total_len -= int(self._slot_len[slots].sum())

    # ------------------------------------------------------------------ search

    def search(self, queries: list[str], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Per query, up to k (id, score) best first (ties by smaller id); only `allowed` ids are scored."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"k must be a positive integer; got {k!r}")
        if isinstance(queries, str):
            raise InvalidInput("queries must be a list of strings, not one string")
        mask = self._mask(allowed)
        return [self._search_one(query, int(k), mask) for query in queries]

    def _search_one(self, query: str, k: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
        """BM25 over the postings of the query's terms only."""
        n = self.count
        if n == 0:
            return []
        counts: dict[int, int] = {}
        for term in analyze(query):
            tid = self._vocab.get(term)
            if tid is not None:
                counts[tid] = counts.get(tid, 0) + 1
        avg = self._total_len / n if self._total_len else 1.0
        all_slots, all_scores = [], []
        for tid, qtf in counts.items():
            slots, tfs, df = self._gather(tid, mask)
            if df == 0 or slots.size == 0:
                continue
            idf = idf_weight(n, df)
            norm = self.k1 * (1.0 - self.b + self.b * self._slot_len[slots] / avg)  # (P,)
            all_slots.append(slots)
            all_scores.append(qtf * idf * tfs * (self.k1 + 1.0) / (tfs + norm))
        return self._top(all_slots, all_scores, k)

    def _compact(self) -> None:
        """One segment, live slots renumbered 0..N-1 in their old order, unused terms dropped."""
        merged = self._compact_slots()
        used = merged.terms  # (T,) ids still referenced, ascending
        words = self._words()
        self._vocab = {words[t]: i for i, t in enumerate(used.tolist())}
        self._segments = [] if merged.size == 0 else [
            _Segment(np.arange(used.size, dtype=np.int32), merged.starts, merged.slots, merged.tfs)
        ]

    def _words(self) -> list[str]:
        """Vocabulary in term-id order."""
        words = [""] * len(self._vocab)
        for word, tid in self._vocab.items():
            words[tid] = word
        return words

    # ------------------------------------------------------------------ snapshots

    def to_bytes(self) -> bytes:
        """Compacted snapshot: JSON header, then raw little-endian arrays and the vocabulary."""
        self._compact()
        seg = self._segments[0] if self._segments else _csr(*(np.empty(0),) * 3)
        arrays = {
            "slot_ids": self._slot_ids.astype("<i8"),
            "slot_len": self._slot_len.astype("<i4"),
            "starts": seg.starts.astype("<i8"),
            "slots": seg.slots.astype("<i4"),
            "tfs": seg.tfs.astype("<f4"),
        }
        vocab = "\n".join(self._words()).encode()  # terms never contain whitespace
        layout, offset = {}, 0
        for name, arr in arrays.items():
            layout[name] = [arr.dtype.str, int(arr.size), offset]
            offset += arr.nbytes
        header = {"format": _FORMAT, "k1": self.k1, "b": self.b, "arrays": layout, "vocab": [offset, len(vocab)],
                  "terms": len(self._vocab)}
        return frame(_MAGIC, header, b"".join(arr.tobytes() for arr in arrays.values()) + vocab)

    @classmethod
    def from_bytes(cls, data: bytes) -> BM25Index:
        """Restore an index written by to_bytes; ValueError if the bytes are not one."""
        head, body = unframe(data, _MAGIC, _FORMAT, "BM25Index")
        try:
            arrays = {}
            for name, (dtype, size, offset) in head["arrays"].items():
                arr = np.frombuffer(body, dtype=np.dtype(dtype), count=size, offset=offset)
                arrays[name] = arr.astype(arr.dtype.newbyteorder("="))
            v_off, v_len = head["vocab"]
            if v_off + v_len != len(body):
                raise ValueError("truncated or has trailing bytes")
            words = bytes(body[v_off : v_off + v_len]).decode().split("\n") if head["terms"] else []
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"BM25Index snapshot is corrupt: {exc}") from None
        self = cls(head["k1"], head["b"])
        self._vocab = {w: i for i, w in enumerate(words)}
        n = arrays["slot_ids"].size
        self._slot_ids = arrays["slot_ids"].astype(np.int64)
        self._slot_len = arrays["slot_len"].astype(np.int32)
        self._live = np.ones(n, dtype=bool)
        self._nslots = n
        self._total_len = int(self._slot_len.sum())
        if arrays["slots"].size:
            self._segments = [
                _Segment(np.arange(len(words), dtype=np.int32), arrays["starts"].astype(np.int64),
                         arrays["slots"].astype(np.int32), arrays["tfs"].astype(np.float32))
            ]
        order = np.argsort(self._slot_ids, kind="stable")
        self._keys = self._slot_ids[order]
        self._key_slots = order.astype(np.int64)
        return self


_IMPACT_MAGIC = b"LSIMPx\x00\x01"
_MAX_TERM = 2**31 - 1  # postings keep term ids as int32


def sparse_vector(terms: object, weights: object, where: str = "a sparse vector") -> tuple[np.ndarray, np.ndarray]:
    """(term ids int64, weights float32) of one learned-sparse vector, its zero and negative weights
    dropped; InvalidInput names what is wrong (shapes, term ids outside [0, 2^31 - 1), repeated ids,
    NaN or infinite weights). Chunks a worker commits are checked with this before they are stored:
    a vector the index cannot take would otherwise leave the collection unable to rebuild."""
    try:
        t = np.asarray(terms)
        w = np.asarray(weights, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}: term ids and weights must be numbers ({exc})") from None
    if t.ndim != 1 or t.shape != w.shape:
        raise InvalidInput(f"{where} needs term ids and weights of the same length; got {t.size} ids and {w.size} weights")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise InvalidInput(f"{where}: term ids must be integers; got {t.dtype}")
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= _MAX_TERM):
        raise InvalidInput(f"{where}: term ids must lie in [0, {_MAX_TERM}); got {int(t.min())}..{int(t.max())}")
    if not np.isfinite(w).all():
        raise InvalidInput(f"{where}: weights must be finite numbers; got NaN or infinity")
    keep = w > 0
    t, w = t[keep], w[keep]
    if np.unique(t).size != t.size:
        raise InvalidInput(f"{where} repeats a term id")
    return t, w


FEEDBACK_TERMS = 64  # terms the feedback adds to a query at most
MAX_FEEDBACK_CHUNKS = 100


def _sum_by_term(terms: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique term ids ascending, the float64 sum of each one's weights)."""
    t, inverse = np.unique(terms, return_inverse=True)
    w = np.zeros(t.size)
    np.add.at(w, inverse, weights)
    return t, w


def feedback_query(query: tuple[np.ndarray, np.ndarray], chunks: list[tuple[np.ndarray, np.ndarray]], weight: float,
                   terms: int = FEEDBACK_TERMS) -> tuple[np.ndarray, np.ndarray]:
    """Rocchio pseudo-relevance feedback for a learned-sparse query: the query scaled to unit length,
    plus `weight` times the mean of the `chunks`' unit-length vectors (the first ranking's best chunks)
    cut to its `terms` largest weights. The index then scales the sum by IDF as it does any query.
    Both were checked before (`sparse_vector`: the query by the first ranking, the chunks when stored).
    -> (term ids ascending, weights); the query itself where no chunk has a weight."""
    qt, qw = query
    found = [(t, w / np.linalg.norm(w)) for t, w in chunks if len(t)]
    if not found or not len(qt):
        return qt, qw
    ct, cw = _sum_by_term(np.concatenate([t for t, _ in found]), np.concatenate([w for _, w in found]).astype(np.float64))
    cw /= len(found)
    if ct.size > terms:
        keep = np.sort(np.argsort(-cw, kind="stable")[:terms])
        ct, cw = ct[keep], cw[keep]
    t, w = _sum_by_term(np.concatenate([qt, ct]), np.concatenate([qw / np.linalg.norm(qw), weight * cw]))
    return t, w.astype(np.float32)

class ImpactIndex(_Postings):
    """Learned-sparse (SPLADE) retrieval: documents and queries are (term ids, weights) over the
    model's vocabulary; a document's score is the dot product sum_t q_t * d_t, accumulated from
    the query terms' postings, pruned by MaxScore under IDF (`search`; `lodestar bench sparse`
    measures it against plain accumulation). With idf=True each query weight is first scaled by
    the term's IDF over this index's live postings (BM25's form, `idf_weight`): a small encoder's
    weights say little about how rare a term is in the user's corpus, and the index knows it
    exactly, with nothing to re-encode as it grows."""

    def add(self, ids: np.ndarray, vectors: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Index sparse vectors (term ids, weights > 0) under new ids."""
        ids = as_ids(ids)
        self._check_new(ids, len(vectors), "vectors")
        if ids.size == 0:
            return
        terms, weights, lengths = [], [], []
        for t, w in vectors:
            t, w = sparse_vector(t, w)
            terms.append(t)
            weights.append(w)
            lengths.append(t.size)
        lens = np.asarray(lengths, dtype=np.int64)
        doc = np.repeat(np.arange(ids.size, dtype=np.int64), lens)
        self._add_postings(ids, lens, doc, np.concatenate(terms) if terms else np.empty(0, np.int64),
                           np.concatenate(weights) if weights else np.empty(0, np.float32))

    def search(self, queries: list[tuple[np.ndarray, np.ndarray]], k: int, allowed: np.ndarray | None = None,
               idf: bool = False, prune: bool | None = None, length_norm: float = 0.0) -> list[list[tuple[int, float]]]:
        """Per query vector, up to k (id, score) best first; only `allowed` ids are scored. idf:
        scale each query weight by the term's IDF over all live documents (a filter does not change it).
        prune: MaxScore (`_maxscore`, the same top k), or False to read every posting of every query
        term; unset = idf. IDF gives the common terms, whose postings are long, small bounds, so
        MaxScore skips most of them (4x at 300k documents, `lodestar bench sparse`); without it their
        bounds are like a rare term's, little is skipped and the bookkeeping costs 5-30%.
        length_norm: BM25's b for chunk length; each score is divided by 1 - b + b * (the chunk's
        non-zero terms / their mean over the live chunks that hold terms), so long chunks do not win on term count alone
        (0 = off)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"k must be a positive integer; got {k!r}")
        if not isinstance(length_norm, (int, float)) or not 0.0 <= length_norm <= 1.0:
            raise InvalidInput(f"length_norm={length_norm} is out of range: use 0..1 (0 = off; BM25 uses 0.75)")
        mask = self._mask(allowed)
        prune = idf if prune is None else prune
        norm = self._length_norm(float(length_norm)) if self.count else None
        scale = 1.0 if norm is None else 1.0 / float(norm.min())  # the most a divisor can raise a posting
        out = []
        for terms, weights in queries:
            terms, weights = sparse_vector(terms, weights, "a sparse query vector")
            plan = self._plan(terms, weights, idf, scale) if self.count else []
            out.append(self._maxscore(plan, int(k), mask, norm) if prune else self._accumulate(plan, int(k), mask, norm))
        return out

    def _length_norm(self, b: float) -> np.ndarray | None:
        """(S,) each slot's divisor 1 - b + b * len / mean live len (None for b = 0); slots never scored
        (dead, or without terms) get inf, so the minimum is the smallest divisor a posting can meet."""
        if b == 0.0:
            return None
        lens = self._slot_len[: self._nslots].astype(np.float64)
        live = self._live[: self._nslots] & (lens > 0)
        if not live.any():
            return None
        norm = 1.0 - b + b * lens / lens[live].mean()
        norm[~live] = np.inf
        return norm

    @staticmethod
    def _scaled(contrib: np.ndarray, slots: np.ndarray, norm: np.ndarray | None) -> np.ndarray:
        """Postings' contributions divided by their slots' length norm (both search paths, the same way)."""
        return contrib if norm is None else contrib / norm[slots]

    def _plan(self, terms: np.ndarray, weights: np.ndarray, idf: bool, scale: float = 1.0) -> list[tuple[int, float, float]]:
        """(term, effective query weight, upper bound of its contribution) of each query term (weights
        positive: `sparse_vector`) present in the index, by decreasing bound (stable): both search paths add a document's
        contributions in this order, so their sums agree to the bit. The bound is the weight times
        the term's largest posting, slightly inflated (float32 products must not exceed it). Without
        dead slots the document frequency is the postings count; otherwise the live postings are
        counted once per term until the next write (`_live_df`). `scale` inflates the bounds by the
        largest factor length normalisation can multiply a posting by."""
        plan = []
        clean = self._nslots == self.count
        for t, qw in zip(np.asarray(terms).tolist(), np.asarray(weights, dtype=np.float64).tolist()):
            bounds = [seg.bound(int(t)) for seg in self._segments]
            top = max((b for b, _ in bounds), default=0.0)
            if top <= 0:
                continue
            if not idf:
                w = qw
            else:
                df = sum(n for _, n in bounds) if clean else self._live_df(int(t))
                w = qw * idf_weight(self.count, df)
            plan.append((int(t), w, float(w * top) * scale * (1 + 1e-6)))
        return sorted(plan, key=lambda p: -p[2])

    def _live_df(self, term: int) -> int:
        """Live documents holding `term`, remembered until the next add or remove."""
        df = self._df_cache.get(term)
        if df is None:
            df = self._df_cache[term] = self._gather(term, None)[2]
        return df

    def _accumulate(self, plan: list[tuple[int, float, float]], k: int, mask: np.ndarray | None,
                    norm: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Plain accumulation: every posting of every query term."""
        slots_all, scores_all = [], []
        for t, w, _ in plan:
            slots, dw, _ = self._gather(t, mask)
            if slots.size:
                slots_all.append(slots)
                scores_all.append(self._scaled(w * dw, slots, norm))
        return self._top(slots_all, scores_all, k)

    def _maxscore(self, plan: list[tuple[int, float, float]], k: int, mask: np.ndarray | None,
                  norm: np.ndarray | None = None) -> list[tuple[int, float]]:
        """MaxScore (Turtle & Flood), term at a time: terms in decreasing upper bound are accumulated
        until the bounds of those left sum below theta, a lower bound of the k-th best score; no document
        they alone match can then reach the top k. The terms left only look up the surviving
        candidates (a binary search into their postings, or a scatter when that is cheaper), and a
        candidate is dropped once its partial score plus the bounds left fall below theta.
        Exact: the same top k and scores as plain accumulation (`_plan` fixes the order of the additions)."""
        if not plan:
            return []
        rest = np.append(np.cumsum([u for *_, u in plan][::-1])[::-1], 0.0)  # rest[i]: bounds of terms i..
        acc = np.zeros(self._nslots)  # (S,) float64 partial scores
        seen = np.zeros(self._nslots, dtype=bool)  # (S,) matched by a term so far
        theta, i = -np.inf, 0
        while i < len(plan) and not rest[i] < theta:
            t, w, _ = plan[i]
            slots, dw, _ = self._gather(t, mask)
            acc[slots] += self._scaled(w * dw, slots, norm)  # a slot appears once per term
            seen[slots] = True
            i += 1
            if slots.size >= k and rest[i] < rest[0] - rest[i]:  # the terms left could be outscored:
                part = acc[slots[:: max(1, slots.size // 4096)]]  # the k-th best of some of these documents
                if part.size >= k:  # bounds the k-th best overall
                    theta = max(theta, float(np.partition(part, part.size - k)[part.size - k]))
        cand = np.flatnonzero(seen)  # (C,)
        partial = acc[cand]
        scratch = None
        for j in range(i, len(plan)):
            if partial.size > k:
                theta = max(theta, float(np.partition(partial, partial.size - k)[partial.size - k]))
                keep = (partial + rest[j]) * (1 + 1e-12) >= theta  # margin: the float sum may round up later
                cand, partial = cand[keep], partial[keep]
            t, w, _ = plan[j]
            for seg in self._segments:
                found = seg.postings(t)
                if found is None:
                    continue
                ps, pw = found
                if cand.size * 16 < ps.size:  # few candidates: binary search into the postings
                    pos = np.minimum(np.searchsorted(ps, cand), ps.size - 1)
                    hit = ps[pos] == cand
                    partial[hit] += self._scaled(w * pw[pos[hit]], cand[hit], norm)
                else:  # scatter the postings, read the candidates' cells
                    scratch = np.zeros(self._nslots, dtype=np.float32) if scratch is None else scratch
                    scratch[ps] = pw
                    partial += self._scaled(w * scratch[cand], cand, norm)
                    scratch[ps] = 0
        return self._best(cand, partial, k) if cand.size else []

    def to_bytes(self) -> bytes:
        """Compacted snapshot: JSON header, then raw little-endian arrays."""
        self._compact()
        seg = self._segments[0] if self._segments else _csr(*(np.empty(0),) * 3)
        arrays = {"slot_ids": self._slot_ids.astype("<i8"), "slot_len": self._slot_len.astype("<i4"),
                  "terms": seg.terms.astype("<i4"), "starts": seg.starts.astype("<i8"), "slots": seg.slots.astype("<i4"),
                  "weights": seg.tfs.astype("<f4")}
        layout, offset = {}, 0
        for name, arr in arrays.items():
            layout[name] = [arr.dtype.str, int(arr.size), offset]
            offset += arr.nbytes
        return frame(_IMPACT_MAGIC, {"format": _FORMAT, "arrays": layout, "bytes": offset}, b"".join(a.tobytes() for a in arrays.values()))

    @classmethod
    def from_bytes(cls, data: bytes) -> ImpactIndex:
        """Restore an index written by to_bytes; ValueError if the bytes are not one."""
        head, body = unframe(data, _IMPACT_MAGIC, _FORMAT, "ImpactIndex")
        try:
            if head["bytes"] != len(body):
                raise ValueError("truncated or has trailing bytes")
            arrays = {name: np.frombuffer(body, dtype=np.dtype(dt), count=size, offset=off).astype(np.dtype(dt).newbyteorder("="))
                      for name, (dt, size, off) in head["arrays"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ImpactIndex snapshot is corrupt: {exc}") from None
        self = cls()
        n = arrays["slot_ids"].size
        self._slot_ids = arrays["slot_ids"].astype(np.int64)
        self._slot_len = arrays["slot_len"].astype(np.int32)
        self._live = np.ones(n, dtype=bool)
        self._nslots = n
        if arrays["slots"].size:
            self._segments = [_Segment(arrays["terms"].astype(np.int32), arrays["starts"].astype(np.int64),
                                       arrays["slots"].astype(np.int32), arrays["weights"].astype(np.float32))]
        order = np.argsort(self._slot_ids, kind="stable")
        self._keys = self._slot_ids[order]
        self._key_slots = order.astype(np.int64)
        return self
