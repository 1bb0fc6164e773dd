"""Learned-sparse (SPLADE) retrieval: an impact index over the shared postings (`postings.py`),
and the validation every stored or searched sparse vector goes through (`sparse_vector`)."""

from __future__ import annotations

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.framing import frame, unframe
from lodestar.retrieve.ids import as_ids
from lodestar.retrieve.postings import FORMAT, Postings, Segment, idf_weight, pack_arrays, unpack_arrays

_MAGIC = b"LSIMPx\x00\x01"
MAX_TERM = 2**31 - 1  # postings keep term ids as int32


MAX_TERM = 2**31 - 1  # postings keep term ids as int32


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
        raise InvalidInput(
            f"{where} needs term ids and weights of the same length; got {t.size} ids and {w.size} weights"
        )
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise InvalidInput(f"{where}: term ids must be integers; got {t.dtype}")
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= MAX_TERM):
        raise InvalidInput(f"{where}: term ids must lie in [0, {MAX_TERM}); got {int(t.min())}..{int(t.max())}")
    if not np.isfinite(w).all():
        raise InvalidInput(f"{where}: weights must be finite numbers; got NaN or infinity")
    keep = w > 0
    t, w = t[keep], w[keep]
    if np.unique(t).size != t.size:
        raise InvalidInput(f"{where} repeats a term id")
    return t, w


class ImpactIndex(Postings):
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
        self._add_postings(
            ids,
            lens,
            doc,
            np.concatenate(terms) if terms else np.empty(0, np.int64),
            np.concatenate(weights) if weights else np.empty(0, np.float32),
        )

    def search(
        self,
        queries: list[tuple[np.ndarray, np.ndarray]],
        k: int,
        allowed: np.ndarray | None = None,
        idf: bool = False,
        prune: bool | None = None,
        length_norm: float = 0.0,
    ) -> list[list[tuple[int, float]]]:
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
            out.append(
                self._maxscore(plan, int(k), mask, norm) if prune else self._accumulate(plan, int(k), mask, norm)
            )
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

    def _plan(
        self, terms: np.ndarray, weights: np.ndarray, idf: bool, scale: float = 1.0
    ) -> list[tuple[int, float, float]]:
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

    def _accumulate(
        self, plan: list[tuple[int, float, float]], k: int, mask: np.ndarray | None, norm: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Plain accumulation: every posting of every query term."""
        slots_all, scores_all = [], []
        for t, w, _ in plan:
            slots, dw, _ = self._gather(t, mask)
            if slots.size:
                slots_all.append(slots)
                scores_all.append(self._scaled(w * dw, slots, norm))
        return self._top(slots_all, scores_all, k)

    def _maxscore(
        self, plan: list[tuple[int, float, float]], k: int, mask: np.ndarray | None, norm: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
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
        seg = self._snapshot_segment()
        arrays = {
            "slot_ids": self._slot_ids.astype("<i8"),
            "slot_len": self._slot_len.astype("<i4"),
            "terms": seg.terms.astype("<i4"),
            "starts": seg.starts.astype("<i8"),
            "slots": seg.slots.astype("<i4"),
            "weights": seg.tfs.astype("<f4"),
        }
        layout, body = pack_arrays(arrays)
        return frame(_MAGIC, {"format": FORMAT, "arrays": layout, "bytes": len(body)}, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> ImpactIndex:
        """Restore an index written by to_bytes; ValueError if the bytes are not one."""
        head, body = unframe(data, _MAGIC, FORMAT, "ImpactIndex")
        try:
            if head["bytes"] != len(body):
                raise ValueError("truncated or has trailing bytes")
            arrays = unpack_arrays(body, head["arrays"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ImpactIndex snapshot is corrupt: {exc}") from None
        self = cls()
        segment = (
            Segment(
                arrays["terms"].astype(np.int32),
                arrays["starts"].astype(np.int64),
                arrays["slots"].astype(np.int32),
                arrays["weights"].astype(np.float32),
            )
            if arrays["slots"].size
            else None
        )
        self._restore(arrays["slot_ids"], arrays["slot_len"], segment)
        return self
