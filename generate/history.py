"""Past outputs as a draft source (SuffixDecoding's global tree over earlier responses): what this
decoder generated for earlier requests is searched like a datastore, since the model tends to
repeat its own phrasings (answer openings, code idioms) more closely than any corpus does.

In memory only: each finished output becomes a small suffix-array segment; segments are merged
into one when there are too many, and the oldest outputs are dropped past `max_tokens`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from lodestar.generate.datastore import Datastore, LookupConfig, build_segment
from lodestar.generate.suffix_array import SEPARATOR
from lodestar.generate.types import Candidates


class OutputHistory:
    """Outputs of finished requests, newest last, searchable by longest suffix match."""

    def __init__(self, max_tokens: int = 1_000_000, max_segments: int = 8) -> None:
        self.max_tokens = max_tokens
        self.max_segments = max_segments
        self._outputs: deque[np.ndarray] = deque()
        self._tokens = 0
        self._store = Datastore(None, [])  # replaced whole on every change: readers never see a half-built one
        self._lock = threading.Lock()

    @property
    def num_tokens(self) -> int:
        return self._tokens

    def add(self, tokens: Sequence[int]) -> None:
        """Remember one output (its token ids)."""
        if not tokens:
            return
        arr = np.asarray(list(tokens) + [SEPARATOR], dtype=np.int32)  # (n + 1,)
        with self._lock:
            self._outputs.append(arr)
            self._tokens += arr.shape[0]
            dropped = False
            while self._tokens > self.max_tokens and len(self._outputs) > 1:
                self._tokens -= self._outputs.popleft().shape[0]
                dropped = True
            segments = list(self._store.segments)
            if dropped or len(segments) >= self.max_segments:  # rebuild one segment from what is kept
                segments = [build_segment(np.concatenate(list(self._outputs)), len(self._outputs))]
            else:
                segments.append(build_segment(arr, 1))
            self._store = Datastore(None, segments)

    def clear(self) -> None:
        with self._lock:
            self._outputs.clear()
            self._tokens = 0
            self._store = Datastore(None, [])

    def lookup(self, context: Sequence[int], config: LookupConfig) -> Candidates | None:
        return self._store.lookup(context, config, source="history")
