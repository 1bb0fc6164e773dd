"""A bounded, thread-safe LRU of sentence vectors, keyed by (embedding options, sentence text).

Retrieved passages repeat across queries (popular documents), and a sentence's vector does not
depend on the query, so the extractive compressor embeds each sentence once while it stays cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


class VectorCache:
    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max(0, max_entries)
        self._data: OrderedDict[tuple[Hashable, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, key: Hashable, texts: list[str]) -> list[np.ndarray | None]:
        with self._lock:
            out: list[np.ndarray | None] = []
            for t in texts:
                v = self._data.get((key, t))
                if v is not None:
                    self._data.move_to_end((key, t))
                    self.hits += 1
                else:
                    self.misses += 1
                out.append(v)
            return out

    def put_many(self, key: Hashable, texts: list[str], vectors: np.ndarray) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            for t, v in zip(texts, vectors):
                self._data[(key, t)] = v
                self._data.move_to_end((key, t))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)
