"""The dense side of a collection created with dense='none': a sparse-only collection keeps no vectors
and runs no model forward at upsert or search. It stands where a FAISS index would (writes, snapshots
and stats treat it like one), holds nothing, and refuses to be searched."""

from __future__ import annotations

import numpy as np

from lodestar.errors import InvalidInput

MAGIC = b"LSNODENS"


class NoDense:
    """A dense index of width 0: adds and removes are no-ops, a search is InvalidInput."""

    dim = 0
    spec = "none"
    trained = True
    count = 0
    tombstones = 0
    note = ""

    def ids(self) -> np.ndarray:
        return np.empty(0, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Nothing to keep: chunks of a sparse-only collection have (C, 0) vectors."""

    def remove(self, ids: np.ndarray) -> int:
        return 0

    def compact(self) -> None:
        """Nothing to compact."""

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise InvalidInput("this collection was created with dense='none': search it with retriever='sparse'")

    def to_bytes(self) -> bytes:
        return MAGIC

    @classmethod
    def from_bytes(cls, data: bytes) -> NoDense:
        if bytes(data) != MAGIC:
            raise ValueError("not a NoDense snapshot")
        return cls()
