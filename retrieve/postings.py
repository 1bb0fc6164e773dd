"""The inverted-index machinery BM25 (`bm25.py`) and learned-sparse (`impact.py`) indexes share.

The index is a small log-structured merge of immutable CSR segments (term -> postings of
(slot, weight)): each `add` writes one segment and equal-sized neighbours are merged, so there are
O(log N) segments and every posting is rewritten O(log N) times. A removed document only flips its
slot's live bit; merges drop its postings, and a full compaction renumbers slots once dead slots
outnumber live ones. A query touches only the postings of its own terms (no loop over documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.ids import as_ids, member

FORMAT = 1  # snapshot format of both index kinds


def idf_weight(n: int, df: int) -> float:
    """Lucene's BM25 idf of a term in `df` of `n` documents: ln(1 + (n - df + 0.5) / (df + 0.5))."""
    return np.float64(
        np.log1p((n - df + 0.5) / (df + 0.5))
    )  # a numpy scalar keeps float32 weights' products in float64


@dataclass
class Segment:
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


def csr(terms: np.ndarray, slots: np.ndarray, tfs: np.ndarray) -> Segment:
    """Segment from postings already sorted by (term, slot)."""
    uniq, first = np.unique(terms, return_index=True)
    starts = np.append(first, terms.size).astype(np.int64)
    return Segment(uniq.astype(np.int32), starts, slots.astype(np.int32), tfs.astype(np.float32))


class Postings:
    """The inverted-index machinery shared by BM25 and learned-sparse (impact) indexes: slots for
    int64 ids, live bits, log-structured CSR segments of (slot, weight) postings per term."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []
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

    def _add_postings(
        self, ids: np.ndarray, lengths: np.ndarray, doc: np.ndarray, terms: np.ndarray, weights: np.ndarray
    ) -> None:
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
            self._segments.append(csr(terms[by], base + doc[by], weights[by]))
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

    def _merge(self, segments: list[Segment], remap: np.ndarray | None = None) -> Segment:
        """One segment from several (oldest first), without dead postings; `remap` renumbers slots."""
        terms = np.concatenate([np.repeat(s.terms, np.diff(s.starts)) for s in segments])  # (P,)
        slots = np.concatenate([s.slots for s in segments])
        tfs = np.concatenate([s.tfs for s in segments])
        keep = self._live[slots]
        terms, slots, tfs = terms[keep], slots[keep], tfs[keep]
        if remap is not None:
            slots = remap[slots]
        order = np.argsort(terms, kind="stable")  # older segments hold smaller slots: stays sorted
        return csr(terms[order], slots[order], tfs[order])

    def _compact_slots(self) -> Segment:
        """Renumber live slots 0..N-1 in their old order; -> all postings merged into one segment
        (which the caller installs)."""
        live_slots = np.flatnonzero(self._live[: self._nslots])  # (N,)
        remap = np.full(max(self._nslots, 1), -1, dtype=np.int64)
        remap[live_slots] = np.arange(live_slots.size)
        merged = self._merge(self._segments, remap) if self._segments else csr(*(np.empty(0),) * 3)
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

    # ------------------------------------------------------------------ snapshots

    def _snapshot_segment(self) -> Segment:
        """Compact, then the one segment left (empty when nothing is indexed): what a snapshot holds."""
        self._compact()
        return self._segments[0] if self._segments else csr(*(np.empty(0),) * 3)

    def _restore(self, slot_ids: np.ndarray, slot_len: np.ndarray, segment: Segment | None) -> None:
        """The state a compacted snapshot describes: slots 0..N-1, all live, in one segment (or none)."""
        n = slot_ids.size
        self._slot_ids = slot_ids.astype(np.int64)  # (N,)
        self._slot_len = slot_len.astype(np.int32)  # (N,)
        self._live = np.ones(n, dtype=bool)
        self._nslots = n
        if segment is not None:
            self._segments = [segment]
        order = np.argsort(self._slot_ids, kind="stable")
        self._keys = self._slot_ids[order]
        self._key_slots = order.astype(np.int64)


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, list[Any]], bytes]:
    """Snapshot body: the arrays' raw bytes back to back, and their layout {name: [dtype, size, offset]}."""
    layout, offset = {}, 0
    for name, arr in arrays.items():
        layout[name] = [arr.dtype.str, int(arr.size), offset]
        offset += arr.nbytes
    return layout, b"".join(arr.tobytes() for arr in arrays.values())


def unpack_arrays(body: bytes | memoryview, layout: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Inverse of `pack_arrays`: native-byte-order copies of the arrays `layout` places in `body`."""
    return {
        name: np.frombuffer(body, dtype=np.dtype(dt), count=size, offset=off).astype(np.dtype(dt).newbyteorder("="))
        for name, (dt, size, off) in layout.items()
    }
