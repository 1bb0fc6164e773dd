"""BM25 sparse retrieval over the shared postings (`postings.py`), words from `lodestar.text`.

Scoring is Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) and
tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)), with N, df and avglen over live documents.
A term repeated in the query counts once per occurrence (as rank_bm25 and bm25s do).
"""

from __future__ import annotations

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.framing import frame, unframe
from lodestar.retrieve.ids import as_ids
from lodestar.retrieve.postings import FORMAT, Postings, Segment, idf_weight, pack_arrays, unpack_arrays
from lodestar.text import analyze

_MAGIC = b"LSBM25\x00\x01"


class BM25Index(Postings):
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
        self._segments = (
            []
            if merged.size == 0
            else [Segment(np.arange(used.size, dtype=np.int32), merged.starts, merged.slots, merged.tfs)]
        )

    def _words(self) -> list[str]:
        """Vocabulary in term-id order."""
        words = [""] * len(self._vocab)
        for word, tid in self._vocab.items():
            words[tid] = word
        return words

    # ------------------------------------------------------------------ snapshots

    def to_bytes(self) -> bytes:
        """Compacted snapshot: JSON header, then raw little-endian arrays and the vocabulary."""
        seg = self._snapshot_segment()
        arrays = {
            "slot_ids": self._slot_ids.astype("<i8"),
            "slot_len": self._slot_len.astype("<i4"),
            "starts": seg.starts.astype("<i8"),
            "slots": seg.slots.astype("<i4"),
            "tfs": seg.tfs.astype("<f4"),
        }
        vocab = "\n".join(self._words()).encode()  # terms never contain whitespace
        layout, body = pack_arrays(arrays)
        header = {
            "format": FORMAT,
            "k1": self.k1,
            "b": self.b,
            "arrays": layout,
            "vocab": [len(body), len(vocab)],
            "terms": len(self._vocab),
        }
        return frame(_MAGIC, header, body + vocab)

    @classmethod
    def from_bytes(cls, data: bytes) -> BM25Index:
        """Restore an index written by to_bytes; ValueError if the bytes are not one."""
        head, body = unframe(data, _MAGIC, FORMAT, "BM25Index")
        try:
            arrays = unpack_arrays(body, head["arrays"])
            v_off, v_len = head["vocab"]
            if v_off + v_len != len(body):
                raise ValueError("truncated or has trailing bytes")
            words = bytes(body[v_off : v_off + v_len]).decode().split("\n") if head["terms"] else []
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"BM25Index snapshot is corrupt: {exc}") from None
        self = cls(head["k1"], head["b"])
        self._vocab = {w: i for i, w in enumerate(words)}
        segment = (
            Segment(
                np.arange(len(words), dtype=np.int32),
                arrays["starts"].astype(np.int64),
                arrays["slots"].astype(np.int32),
                arrays["tfs"].astype(np.float32),
            )
            if arrays["slots"].size
            else None
        )
        self._restore(arrays["slot_ids"], arrays["slot_len"], segment)
        self._total_len = int(self._slot_len.sum())
        return self
